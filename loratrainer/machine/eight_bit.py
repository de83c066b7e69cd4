"""bitsandbytes, which only the 8-bit optimizers need: which names need it, whether it can run here, and keeping
it out of every other run. Importing it on a machine without CUDA prints "Failed to load CPU gemm_4bit_forward"
warnings, and peft imports it unconditionally (peft/helpers.py), so every run showed them.

No torch at module level: the launcher (and so the GUI) calls `refusal` before a run starts.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys

from loratrainer.config.optimizer_table import EIGHT_BIT, OPTIMIZERS
from loratrainer.messages import Msg


def needs_bitsandbytes(optimizer: str) -> bool:
    return optimizer in EIGHT_BIT or optimizer.split(".")[0] == "bitsandbytes"


def unavailable_hint(optimizer: str) -> Msg:
    if optimizer in EIGHT_BIT:
        return OPTIMIZERS[optimizer].unavailable_hint(optimizer)
    return Msg.of("optimizer.needs_cuda", name=optimizer, instead="AdamW")  # a bitsandbytes.optim.X path


def refusal(optimizer: str) -> Msg | None:
    """Why this optimizer cannot run on this machine, or None. Imports torch only for an 8-bit optimizer."""
    if not needs_bitsandbytes(optimizer):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        return Msg.of("optimizer.no_bitsandbytes", hint=unavailable_hint(optimizer))
    import torch

    return None if torch.cuda.is_available() else unavailable_hint(optimizer)


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU, asked once in a child process so that the GUI itself never loads torch
    (its page says before Start that an 8-bit optimizer cannot run here)."""
    try:
        done = subprocess.run([sys.executable, "-c", "import torch; print(int(torch.cuda.is_available()))"], capture_output=True,
                              text=True, timeout=120)
        return done.stdout.strip().endswith("1")
    except (OSError, subprocess.SubprocessError):
        return False


def page_refusal(optimizer: str) -> Msg | None:
    """`refusal` without loading torch in this process (the GUI's note beside the optimizer)."""
    if not needs_bitsandbytes(optimizer):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        return Msg.of("optimizer.no_bitsandbytes", hint=unavailable_hint(optimizer))
    return None if cuda_available() else unavailable_hint(optimizer)


def keep_unloaded_unless_needed(optimizer: str) -> None:
    """Make `import bitsandbytes` fail in this process (peft then runs without it) unless the optimizer needs it.
    Call before anything imports peft."""
    if not needs_bitsandbytes(optimizer):
        sys.modules.setdefault("bitsandbytes", None)  # type: ignore[arg-type]
