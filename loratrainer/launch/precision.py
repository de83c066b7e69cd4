"""The mixed precision a run will actually use on this machine, said before it starts (Show command) without
importing torch: fp16 autocast needs a CUDA GPU, and train/entry.make_accelerator turns it off without one
(the LoRA's ss_mixed_precision then says "no", model/metadata.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cuda_present() -> bool:
    """Whether this machine has a CUDA GPU the trainer can use. torch when it is already loaded; else the NVIDIA
    driver's own listing (Linux: /proc/driver/nvidia/gpus), or nvidia-smi on the PATH elsewhere; macOS never has
    CUDA. CUDA_VISIBLE_DEVICES set empty or to -1 hides every GPU, as it does from torch."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform == "darwin":
        return False
    listing = Path("/proc/driver/nvidia/gpus")
    if sys.platform.startswith("linux"):
        try:
            return any(listing.iterdir())
        except OSError:
            return False
    import shutil

    return shutil.which("nvidia-smi") is not None


def precision_here(config) -> str:
    """"no" where fp16 was asked and there is no CUDA GPU; else what the config asks."""
    asked = config.precision.mixed_precision
    return "no" if asked == "fp16" and not cuda_present() else asked
