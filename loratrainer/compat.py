"""Work-arounds for broken third-party installs that any layer may need. A leaf module: it imports nothing of ours."""

from __future__ import annotations

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
