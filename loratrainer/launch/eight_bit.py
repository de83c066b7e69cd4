"""bitsandbytes, which only the 8-bit optimizers need: which names need it, whether it can run here, and keeping
it out of every other run. Importing it on a machine without CUDA prints "Failed to load CPU gemm_4bit_forward"
warnings, and peft imports it unconditionally (peft/helpers.py), so every run showed them.

No torch at module level: the launcher (and so the GUI) calls `refusal` before a run starts.
"""

from __future__ import annotations

import importlib.util
import sys

from loratrainer.config.optimizer_table import EIGHT_BIT, OPTIMIZERS


def needs_bitsandbytes(optimizer: str) -> bool:
    return optimizer in EIGHT_BIT or optimizer.split(".")[0] == "bitsandbytes"


def unavailable_hint(optimizer: str) -> str:
    if optimizer in EIGHT_BIT:
        return OPTIMIZERS[optimizer].unavailable_hint(optimizer)
    return f"{optimizer} needs bitsandbytes with a CUDA GPU; use AdamW"  # a bitsandbytes.optim.X path


def refusal(optimizer: str) -> str | None:
    """Why this optimizer cannot run on this machine, or None. Imports torch only for an 8-bit optimizer."""
    if not needs_bitsandbytes(optimizer):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        return unavailable_hint(optimizer) + " (bitsandbytes is not installed)"
    import torch

    return None if torch.cuda.is_available() else unavailable_hint(optimizer)


def keep_unloaded_unless_needed(optimizer: str) -> None:
    """Make `import bitsandbytes` fail in this process (peft then runs without it) unless the optimizer needs it.
    Call before anything imports peft."""
    if not needs_bitsandbytes(optimizer):
        sys.modules.setdefault("bitsandbytes", None)  # type: ignore[arg-type]
