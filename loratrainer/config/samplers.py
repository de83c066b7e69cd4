"""Kohya's sample-image sampler names and the diffusers scheduler each one means (no torch: the launcher checks
a prompt file's `--s` names before a run; train.samplers builds the scheduler).

The names and classes are sd-scripts' `get_my_scheduler` (library/train_util.py). `steps_offset=1` and
`set_alpha_to_one=False` are SD1.5's inference settings (its scheduler/scheduler_config.json); `skip_prk_steps`
lets PNDM run with few steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({"sampler.unknown": "unknown sampler {name!r}; choose one of {names}"})


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
        raise UserError(Msg.of("sampler.unknown", name=name, names=", ".join(SAMPLER_NAMES)))
    return key

