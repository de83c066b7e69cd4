"""Kohya's sample-image sampler names -> diffusers schedulers, built from the training noise schedule.

The names and classes are sd-scripts' `get_my_scheduler` (library/train_util.py). The betas, timestep count
and prediction type (epsilon or v) come from the training noise scheduler's config, so samples of a
v-prediction model are denoised as such. `steps_offset=1` and `set_alpha_to_one=False` are SD1.5's inference
settings (its scheduler/scheduler_config.json); `skip_prk_steps` lets PNDM run with few steps. Kohya
also forces `clip_sample=True` as a workaround for an old diffusers bug; we keep SD1.5's `clip_sample=False`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loratrainer.errors import UserError


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # the diffusers class name
    options: dict[str, Any] = field(default_factory=dict)  # beyond the training schedule's config


SAMPLERS: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec("DDIMScheduler", {"set_alpha_to_one": False}),
    "pndm": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False}),
    "lms": SamplerSpec("LMSDiscreteScheduler"),
    "euler": SamplerSpec("EulerDiscreteScheduler"),
    "euler_a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "heun": SamplerSpec("HeunDiscreteScheduler"),
    "dpm_2": SamplerSpec("KDPM2DiscreteScheduler"),
    "dpm_2_a": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
    "dpmsolver": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": SamplerSpec("DPMSolverSinglestepScheduler", {"lower_order_final": True}),
}
# Kohya accepts the k-diffusion spellings of the Karras-style samplers as the same thing.
ALIASES: dict[str, str] = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2", "k_dpm_2_a": "dpm_2_a"}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS) + tuple(ALIASES)


def canonical_sampler(name: str) -> str:
    """'K_Euler_A' -> 'euler_a'; an unknown name is a UserError listing the known ones."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    return key


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
        raise UserError(f"the {name} sampler is not available here ({' '.join(str(exc).split())}); "
                        "install what it names or choose another sampler, e.g. euler_a") from None
