"""Test-only fault injection (reliability.md), e.g. LORATRAINER_FAULT="nan@3,disk_full@save2":
nan@N makes the loss of step N NaN; oom@N raises out-of-memory at step N; disk_full@saveN fails the N-th save
with ENOSPC, as a full disk would."""

from __future__ import annotations

import errno
import os

import torch


def _fault(kind: str) -> int | None:
    spec = os.environ.get("LORATRAINER_FAULT", "")
    for item in spec.split(","):
        name, _, at = item.partition("@")
        at = at.removeprefix("save")
        if name == kind and at.isdigit():
            return int(at)
    return None


def inject_fault(kind: str, step: int, value: torch.Tensor) -> torch.Tensor:
    return value * float("nan") if _fault(kind) == step else value


def fail_step(step: int) -> None:
    if _fault("oom") == step:
        raise torch.OutOfMemoryError("CUDA out of memory (injected by LORATRAINER_FAULT)")


def fail_save(save_number: int, path) -> None:
    if _fault("disk_full") == save_number:
        raise OSError(errno.ENOSPC, "No space left on device (injected by LORATRAINER_FAULT)", str(path))
