"""Test-only fault injection (reliability.md): LORATRAINER_FAULT="nan@3" makes the loss of step 3 NaN."""

from __future__ import annotations

import os

import torch


def _fault(kind: str) -> int | None:
    spec = os.environ.get("LORATRAINER_FAULT", "")
    for item in spec.split(","):
        name, _, at = item.partition("@")
        if name == kind and at.isdigit():
            return int(at)
    return None


def inject_fault(kind: str, step: int, value: torch.Tensor) -> torch.Tensor:
    return value * float("nan") if _fault(kind) == step else value
