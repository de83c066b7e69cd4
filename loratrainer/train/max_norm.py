"""Max-norm regularisation of the LoRA (Kohya's scale_weight_norms): after each step, scale down any module
whose update up @ down x (alpha / rank) has a norm above the limit (sd-scripts networks/lora.py)."""

from __future__ import annotations

import torch

ADAPTER = "default"


@torch.no_grad()
def apply_max_norm(handle, max_norm: float) -> tuple[int, float]:
    """Returns (modules scaled, largest norm seen)."""
    scaled, largest = 0, 0.0
    for info in handle.modules.values():
        layer = handle.model(info.part).get_submodule(info.path)
        down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        update = up.flatten(1).float() @ down.flatten(1).float() * (info.alpha / info.rank)
        norm = update.norm()
        largest = max(largest, float(norm))
        if norm > max_norm:
            ratio = (max_norm / norm) ** 0.5
            down.mul_(ratio)
            up.mul_(ratio)
            scaled += 1
    return scaled, largest
