"""Process-level setup of the training process: library guards, versions, the seed, threads."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys


def hide_broken_torchvision() -> None:
    """Make an unusable torchvision look absent, so transformers does not fail importing it.

    We never use torchvision, but transformers imports it whenever it is installed; a build that does not
    match torch raises "operator torchvision::nms does not exist" on import and takes every model class with it.
    """
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except Exception:  # any failure: a mismatched build, missing libraries
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]  # importlib.util.find_spec -> None


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
