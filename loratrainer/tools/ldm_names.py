"""Kohya module names <-> weight keys of an original single-file (LDM) SD1.x checkpoint.

Kohya names are diffusers module paths with `_` for `.` (lora_unet_down_blocks_0_attentions_0_..., lora_te_text_
model_encoder_layers_0_...). For the UNet the path is found by running diffusers' own LDM -> diffusers key
conversion (diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint) on placeholders that carry each LDM
key's index, so the mapping is exactly the one diffusers, A1111 and ComfyUI agree on, for any UNet config
(SD1.5's shipped config, or the tiny test model's). Only key names are handled; no weight is read here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loratrainer.model.checkpoint import CLIP_L, UNET

_CLIP_TEXT = CLIP_L + "text_model."


def kohya_to_ldm(keys: list[str], config_dir: Path) -> dict[str, str]:
    """{Kohya module name: the checkpoint's key of that module's weight} for the UNet and the text encoder."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet_keys = [k for k in keys if k.startswith(UNET)]
    placeholders = {k: torch.tensor([float(i)]) for i, k in enumerate(unet_keys)}
    config = UNet2DConditionModel.load_config(config_dir, subfolder="unet")
    out: dict[str, str] = {}
    for diffusers_key, value in convert_ldm_unet_checkpoint(placeholders, config).items():
        if diffusers_key.endswith(".weight") and value.numel() == 1:
            out["lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")] = unet_keys[int(value.item())]
    for key in keys:
        if key.startswith(CLIP_L) and key.endswith(".weight"):
            inner = key[len(CLIP_L):]
            inner = inner if inner.startswith("text_model.") else "text_model." + inner
            out["lora_te_" + inner[: -len(".weight")].replace(".", "_")] = key
    return out
