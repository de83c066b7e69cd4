"""Keys of an original single-file (LDM) SD1.x checkpoint <-> diffusers keys and Kohya module names.

Kohya names are diffusers module paths with `_` for `.` (lora_unet_down_blocks_0_attentions_0_..., lora_te_text_
model_encoder_layers_0_...). For the UNet and the VAE the diffusers key is found by running diffusers' own LDM ->
diffusers conversion (diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint)
on placeholders that carry each LDM key's index, so the mapping is exactly the one diffusers, A1111 and ComfyUI
agree on, for any config (SD1.5's shipped config, or the tiny test model's). Only key names are handled; no
weight is read here. (The placeholders are 1-element tensors: the conversion's only reshape, of the VAE
attention's 1x1 convolutions, applies to tensors of more than two dimensions, so it leaves them alone; the
caller reshapes the real tensor to the diffusers model's shape.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from loratrainer.model.checkpoint import CLIP_L, UNET

_CLIP_TEXT = CLIP_L + "text_model."
VAE = "first_stage_model."


def ldm_to_diffusers(keys: list[str], config_dir: Path) -> dict[str, tuple[str, str]]:
    """{checkpoint key: (component, diffusers key)} for the UNet, VAE and text encoder keys diffusers converts.
    Text encoder keys keep `text_model.`; the caller drops it where its CLIPTextModel is flattened."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    out: dict[str, tuple[str, str]] = {}
    for part, prefix, convert, cls in (("unet", UNET, convert_ldm_unet_checkpoint, UNet2DConditionModel),
                                       ("vae", VAE, convert_ldm_vae_checkpoint, AutoencoderKL)):
        part_keys = [k for k in keys if k.startswith(prefix)]
        if not part_keys:
            continue
        placeholders = {k: torch.tensor([float(i)]) for i, k in enumerate(part_keys)}
        config = cls.load_config(config_dir, subfolder=part)
        for diffusers_key, value in convert(placeholders, config).items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                out[part_keys[int(value.item())]] = (part, diffusers_key)
    for key in keys:
        if key.startswith(CLIP_L):
            inner = key[len(CLIP_L):]
            out[key] = ("text_encoder", inner if inner.startswith("text_model.") else "text_model." + inner)
    return out


def kohya_to_ldm(keys: list[str], config_dir: Path) -> dict[str, str]:
    """{Kohya module name: the checkpoint's key of that module's weight} for the UNet and the text encoder."""
    out: dict[str, str] = {}
    for key, (part, diffusers_key) in ldm_to_diffusers([k for k in keys if not k.startswith(VAE)], config_dir).items():
        if diffusers_key.endswith(".weight"):
            out[KOHYA_PREFIX[part] + diffusers_key[: -len(".weight")].replace(".", "_")] = key
    return out


KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
