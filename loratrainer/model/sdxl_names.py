"""Kohya's SDXL LoRA module names: the one place our diffusers module paths become sd-scripts' names. No torch.

sd-scripts trains SDXL on its own UNet in the original (SGM) layout (library/sdxl_original_unet.py) and names each
LoRA module after that UNet's module path (networks/lora.py create_modules: `lora_unet_` + path with dots as
underscores): lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q, lora_unet_middle_block_1_proj_in,
lora_unet_output_blocks_2_2_conv. Its text encoders are transformers' CLIPTextModel and
CLIPTextModelWithProjection (library/sdxl_model_util.py), so their names are transformers' paths:
lora_te1_text_model_encoder_layers_0_self_attn_q_proj, lora_te2_text_model_encoder_layers_31_mlp_fc2.

We train diffusers' UNet2DConditionModel; its module paths map to the original ones exactly as diffusers'
convert_ldm_unet_checkpoint maps the original checkpoint's keys (in reverse). tests/test_model_sdxl_full_size.py
checks the full-size result against the names sd-scripts' own code builds (tests/fixtures/
sd_scripts_sdxl_lora_modules.json); the same function maps weight keys (`....weight`) too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


@dataclass(frozen=True)
class UNetLayout:
    """What the index arithmetic needs from a UNet2DConditionModel config."""

    layers_per_block: int = 2
    up_block_has_attention: tuple[bool, ...] = (True, True, False)  # SDXL base: CrossAttnUp, CrossAttnUp, Up

    @classmethod
    def of(cls, config) -> "UNetLayout":
        """From a UNet config (diffusers' FrozenDict or a dict)."""
        get: Callable[[str], Any] = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
        return cls(int(get("layers_per_block")), tuple("CrossAttn" in t for t in get("up_block_types")))


SDXL_BASE = UNetLayout()

_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers ResnetBlock2D children -> sd-scripts' ResnetBlock2D (in_layers / emb_layers / out_layers Sequentials)
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_BLOCK = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.*))?$")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


def unet_original_path(path: str, layout: UNetLayout = SDXL_BASE) -> str:
    """A diffusers UNet module path (or weight key) -> the original layout's (sd-scripts' SdxlUNet2DConditionModel)."""
    for ours, theirs in _TOP.items():
        if path == ours or path.startswith(ours + "."):
            return theirs + path[len(ours):]
    per_block = layout.layers_per_block + 1  # input/output blocks per level: the resnets plus the down/upsampler
    m = _BLOCK.match(path)
    if m:
        kind, block, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5) or ""
        if kind == "down_blocks":
            if part == "downsamplers":  # conv -> op (sd-scripts' Downsample2D)
                return _join(f"input_blocks.{(block + 1) * per_block}.0.op", rest.removeprefix("conv").lstrip("."))
            return _join(f"input_blocks.{1 + block * per_block + j}.{0 if part == 'resnets' else 1}", _part(rest, part))
        if part == "upsamplers":  # after the resnet and, in attention blocks, the transformer
            slot = 2 if layout.up_block_has_attention[block] else 1
            return _join(f"output_blocks.{block * per_block + layout.layers_per_block}.{slot}", rest)
        return _join(f"output_blocks.{block * per_block + j}.{0 if part == 'resnets' else 1}", _part(rest, part))
    m = _MID.match(path)
    if m:
        part, j, rest = m.group(1), int(m.group(2)), m.group(3) or ""
        return _join(f"middle_block.{2 * j if part == 'resnets' else 1}", _part(rest, part))
    raise KeyError(f"no original-layout name for UNet path {path}")


def kohya_name(part: str, path: str, layout: UNetLayout = SDXL_BASE) -> str:
    """sd-scripts' SDXL LoRA module name of our module `path` in `part` (unet, text_encoder, text_encoder_2)."""
    if part == "unet":
        path = unet_original_path(path, layout)
    elif not path.startswith(("text_model.", "text_projection")):
        path = "text_model." + path  # transformers >= 5.6 flattened CLIPTextModel; Kohya's names keep text_model
    return PREFIX[part] + path.replace(".", "_")


def _part(rest: str, part: str) -> str:
    if part != "resnets" or not rest:
        return rest
    head, _, tail = rest.partition(".")
    return _join(_RESNET.get(head, head), tail)


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a and b else a or b
