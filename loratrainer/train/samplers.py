"""Kohya's sample-image sampler names -> diffusers schedulers, built from the training noise schedule.

The names and options are config.samplers (sd-scripts' `get_my_scheduler`, library/train_util.py). The betas,
timestep count and prediction type (epsilon or v) come from the training noise scheduler's config, so samples
of a v-prediction model are denoised as such. Kohya also forces `clip_sample=True` as a workaround for an old
diffusers bug; we keep SD1.5's `clip_sample=False`.
"""

from __future__ import annotations

from typing import Any

from loratrainer.errors import UserError
from loratrainer.config.samplers import SAMPLERS, canonical_sampler
from loratrainer.messages import Msg
from loratrainer.run import outcomes as _outcomes  # noqa: F401  the codes of the refusals below (run/outcomes.py defines them torch-free)

def build_scheduler(name: str, training_scheduler_config: Any):
    """A fresh inference scheduler for sampler `name` from the training noise scheduler's config (never that
    scheduler itself, whose state the training loop owns). Keys a class does not take are ignored by diffusers."""
    import diffusers

    spec = SAMPLERS[canonical_sampler(name)]
    cls = getattr(diffusers, spec.scheduler)
    config = {k: v for k, v in dict(training_scheduler_config).items() if not k.startswith("_")}
    config.pop("variance_type", None)  # DDPM's "fixed_small" means something else to the DPM-Solvers
    config.update(steps_offset=1, clip_sample=False, **spec.options)
    try:
        return cls.from_config(config)
    except ImportError as exc:  # a diffusers placeholder class: e.g. LMSDiscreteScheduler needs scipy
        raise UserError(Msg.of("sampler.unavailable", name=name, detail=" ".join(str(exc).split()))) from None
