"""Paths written on another operating system: `C:\\Users\\me\\lora` or `\\\\NAS\\share` in a file opened on Linux or
macOS, `/home/me/lora` on Windows. A leaf module (nothing of ours imported).

Kohya GUI configs travel between machines (docs/kohya-compat.md section 3, "Paths from another system"). On
POSIX, `C:\\x` is a legal relative file name, so using it as written would create `./C:\\x` (or `./C:/x/...`) in
the working folder. The import names such paths in its report and the launcher refuses to start, naming the
setting; nothing is ever created from them.
"""

from __future__ import annotations

import os
import re

# The settings that hold a file or folder path (group.name); sample_prompts is prompt text, not a path.
PATH_SETTINGS = (
    "model.pretrained_model_name_or_path",
    "model.vae",
    "folders.train_data_dir",
    "folders.reg_data_dir",
    "folders.dataset_config",
    "dataset.conditioning_data_dir",
    "folders.validation_data_dir",
    "folders.output_dir",
    "folders.logging_dir",
    "network.network_weights",
    "saving.resume",
)

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:([\\/]|$)")  # C:\x, C:/x, C:
_UNC = re.compile(r"^(\\\\|//)[^\\/]+[\\/]")  # \\NAS\share, //NAS/share


def foreign_kind(value: str, os_name: str | None = None) -> str | None:
    """'Windows' or 'POSIX' when `value` is a path written for that system and this one is the other; else None.

    `os_name` is `os.name` ("posix" or "nt"); a parameter so tests can ask as the other system would.
    """
    os_name = os_name or os.name
    text = value.strip()
    if not text:
        return None
    if os_name == "nt":
        # A POSIX absolute path (/home/x, /mnt/data); //server/share is a UNC path on Windows, not foreign.
        return "POSIX" if text.startswith("/") and not _UNC.match(text) else None
    if _WINDOWS_DRIVE.match(text) or text.startswith("\\\\"):
        return "Windows"
    if "\\" in text and "/" not in text and not os.path.exists(text):
        return "Windows"  # models\sd15.safetensors: a relative Windows path
    return None


def foreign_paths(values: dict[str, str], os_name: str | None = None) -> dict[str, str]:
    """{setting: kind} for each path setting in `values` ({group.name: value}) written for another system."""
    found = {}
    for path in PATH_SETTINGS:
        value = values.get(path)
        kind = foreign_kind(value, os_name) if isinstance(value, str) else None
        if kind:
            found[path] = kind
    return found
