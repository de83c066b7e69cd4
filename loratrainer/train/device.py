"""Where the trainer runs and in which precision: a CUDA GPU, Apple's GPU (mps) or the CPU.

accelerate picks mps by itself when the Accelerator is not told `cpu=True`; what it refuses on mps is checked here
first, so a run on a Mac trains on its GPU in a precision that works there instead of stopping with accelerate's
ValueError (accelerate/accelerator.py: fp16 needs `torch.amp.is_autocast_available("mps")`, which torch has from
2.5 on; bf16 on mps needs macOS 14, accelerate/utils/imports.py `is_bf16_available`). What changed is said in
train.log (and the `started` event's mixed_precision, which the GUI notes when it differs from the setting).
"""

from __future__ import annotations

from dataclasses import dataclass


# the GUI says this line itself, in the page's language (gui/tab_training.py `_CODED_WARNINGS`): keep its start
_OFF = "no CUDA GPU: mixed precision {precision} is off"


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda", "mps" or "cpu"
    precision: str  # the mixed precision accelerate is given: "no", "fp16" or "bf16"
    note: str | None = None  # why the precision is not the configured one (train.log)


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
        why = "this PyTorch has no float16 autocast there (PyTorch 2.5 or newer has)" if precision == "fp16" \
            else "bfloat16 there needs macOS 14 or newer"
        return Device("mps", "no", f"{_OFF.format(precision=precision)}, training in fp32 on the Apple GPU (mps): {why}")
    if precision == "fp16":
        return Device("cpu", "no", f"{_OFF.format(precision='fp16')}, training in fp32 on the CPU (fp16 autocast needs a GPU)")
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
