"""Where the trainer runs and in which precision: a CUDA GPU, Apple's GPU (mps) or the CPU.

accelerate picks mps by itself when the Accelerator is not told `cpu=True`; what it refuses on mps is checked here
first, so a run on a Mac trains on its GPU in a precision that works there instead of stopping with accelerate's
ValueError (accelerate/accelerator.py: fp16 needs `torch.amp.is_autocast_available("mps")`, which torch has from
2.5 on; bf16 on mps needs macOS 14, accelerate/utils/imports.py `is_bf16_available`). What changed is said in
train.log, and in a `note` event that the GUI says in its language (run/notes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from loratrainer.messages import Msg
from loratrainer.run.notes import precision_off


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda", "mps" or "cpu"
    precision: str  # the mixed precision accelerate is given: "no", "fp16" or "bf16"
    note: Msg | None = None  # why the precision is not the configured one (train.log, and a `note` event the page says)


@dataclass(frozen=True)
class Support:
    cuda: bool
    mps: bool = False
    mps_fp16: bool = False  # autocast in float16 on mps (torch >= 2.5)
    mps_bf16: bool = False  # bfloat16 on mps (macOS >= 14)


def choose(precision: str, support: Support) -> Device:
    """The device and precision for a configured mixed precision ("no", "fp16", "bf16")."""
    if support.cuda:
        return Device("cuda", precision)
    if support.mps:
        works = {"no": True, "fp16": support.mps_fp16, "bf16": support.mps_bf16}.get(precision, False)
        if works:
            return Device("mps", precision)
        return Device("mps", "no", precision_off(precision, "mps_fp16" if precision == "fp16" else "mps_bf16"))
    if precision == "fp16":
        return Device("cpu", "no", precision_off("fp16", "cpu"))
    return Device("cpu", precision)


def probe() -> Support:
    """What this machine's torch can do."""
    import torch

    if torch.cuda.is_available():
        return Support(cuda=True)
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() and torch.backends.mps.is_built())
    if not mps:
        return Support(cuda=False)
    try:
        fp16 = bool(torch.amp.is_autocast_available("mps"))
    except (AttributeError, RuntimeError):
        fp16 = False
    try:
        bf16 = bool(torch.backends.mps.is_macos_or_newer(14, 0))
    except (AttributeError, RuntimeError):
        bf16 = False
    return Support(cuda=False, mps=True, mps_fp16=fp16, mps_bf16=bf16)
