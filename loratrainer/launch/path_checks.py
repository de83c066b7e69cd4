"""Before a run (preflight, also `train --print-command`): the config's paths are for this computer and exist.

Checked first, before any folder is created: a Windows path on Linux (`C:\\Users\\me\\model`) would otherwise
become a folder `./C:\\Users\\me\\model` in the working directory (docs/kohya-compat.md section 3, "Paths from
another system"), and a missing base model would be found only after accelerate has started.
"""

from __future__ import annotations

from loratrainer.config import TrainingConfig, get_value
from loratrainer.config.foreign_paths import PATH_SETTINGS, foreign_kind
from loratrainer.launch.input_checks import missing_model_path
from loratrainer.messages import Label, Msg, define

define({
    "launch.foreign_path": "{setting} is a {kind} path ({value}), written on another computer: choose the file or folder on this one",
    "launch.no_base_model": "{setting} is empty: choose the SD1.5 base model (a diffusers folder, a .safetensors/.ckpt file or a Hugging Face id)",
})

# The model settings that must name something that exists when set (input_checks.missing_model_path says what).
_MODEL_SETTINGS = ("model.pretrained_model_name_or_path", "model.vae", "network.network_weights")


def check_paths(config: TrainingConfig) -> Msg | None:
    """The first path problem, naming the setting: a path from another system, no base model, a missing file."""
    for setting in PATH_SETTINGS:
        value = get_value(config, setting)
        kind = foreign_kind(value)
        if kind:
            return Msg.of("launch.foreign_path", setting=Label(setting), kind=kind, value=value)
    if not config.model.pretrained_model_name_or_path.strip():
        return Msg.of("launch.no_base_model", setting=Label("model.pretrained_model_name_or_path"))
    for setting in _MODEL_SETTINGS:
        value = str(get_value(config, setting)).strip()
        problem = missing_model_path(setting, value) if value else None
        if problem is not None:
            return problem
    return None
