"""Process-level facts of the training process: library versions and the seed."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("loratrainer", "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def random_seed() -> int:
    """A seed for `seed = 0` ("random"): from the OS, in the range the config accepts, never 0."""
    return int.from_bytes(os.urandom(4), "little") % (2**32 - 1) + 1
