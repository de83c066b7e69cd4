"""Before a run (preflight, also `train --print-command`): the config's paths are for this computer and exist.

Checked first, before any folder is created: a Windows path on Linux (`C:\\Users\\me\\model`) would otherwise
become a folder `./C:\\Users\\me\\model` in the working directory (docs/kohya-compat.md section 3, "Paths from
another system"), and a missing base model would be found only after accelerate has started.
"""

from __future__ import annotations

import re
from pathlib import Path

from loratrainer.config import TrainingConfig, get_value
from loratrainer.config.foreign_paths import PATH_SETTINGS, foreign_kind
from loratrainer.messages import Label, Msg, define
from loratrainer.launch.start import LaunchRefused

define({
    "launch.foreign_path": "{setting} is a {kind} path ({value}), written on another computer: choose the file or folder on this one",
    "launch.no_base_model": "{setting} is empty: choose the SD1.5 base model (a diffusers folder, a .safetensors/.ckpt file or a Hugging Face id)",
    "launch.path_missing": "{setting}: {value} does not exist",
})

# A Hugging Face model id (owner/name), as the Kohya GUI tells ids from paths (kohya_gui/common_gui.py
# validate_model_path), with dots allowed as the hub allows them.
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Settings that must exist when set; a hub id is accepted for the model and the VAE.
_MUST_EXIST = ("model.pretrained_model_name_or_path", "model.vae", "network.network_weights")
_HUB_ALLOWED = ("model.pretrained_model_name_or_path", "model.vae")
_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # models/x.safetensors is a file, not a hub id


def check_paths(config: TrainingConfig) -> None:
    """Raise LaunchRefused naming the setting: a path from another system, no base model, a missing file."""
    for setting in PATH_SETTINGS:
        value = get_value(config, setting)
        kind = foreign_kind(value)
        if kind:
            raise LaunchRefused(Msg.of("launch.foreign_path", setting=Label(setting), kind=kind, value=value))
    model = config.model.pretrained_model_name_or_path.strip()
    if not model:
        raise LaunchRefused(Msg.of("launch.no_base_model", setting=Label("model.pretrained_model_name_or_path")))
    for setting in _MUST_EXIST:
        value = str(get_value(config, setting)).strip()
        if not value or Path(value).expanduser().exists():
            continue
        if setting in _HUB_ALLOWED and _HUB_ID.match(value) and not value.startswith((".", "~")) and not value.lower().endswith(_FILE_SUFFIXES):
            continue  # downloaded (or found in the cache) when the trainer loads it
        raise LaunchRefused(Msg.of("launch.path_missing", setting=Label(setting), value=value))
