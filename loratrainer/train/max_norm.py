"""Max-norm regularisation of the LoRA (Kohya's scale_weight_norms): after each step, scale down any module
whose update up @ down x (alpha / rank) has a norm above the limit (sd-scripts networks/lora.py).

LoHa/LoKr (LyCORIS's apply_max_norm): the update is peft's delta weight; it is multilinear in the module's n tensors,
so multiplying each by ratio ** (1 / n) scales it by exactly ratio (LyCORIS's LoKr does the same)."""

from __future__ import annotations

import torch

ADAPTER = "default"


@torch.no_grad()
def apply_max_norm(handle, max_norm: float) -> tuple[int, float]:
    """Returns (modules scaled, largest norm seen)."""
    scaled, largest = 0, 0.0
    lycoris_type = handle.network.lora_type in ("LoHa", "LoKr")
    for info in handle.modules.values():
        layer = handle.model(info.part).get_submodule(info.path)
        if lycoris_type:
            norm = float(layer.get_delta_weight(ADAPTER).float().norm())
            largest = max(largest, norm)
            if norm > max_norm:
                tensors = _lycoris_tensors(layer)
                for t in tensors:
                    t.mul_((max_norm / norm) ** (1 / len(tensors)))
                scaled += 1
            continue
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


def _lycoris_tensors(layer) -> list[torch.Tensor]:
    names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
             "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    return [getattr(layer, n)[ADAPTER] for n in names if ADAPTER in getattr(layer, n, {})]
