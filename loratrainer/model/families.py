"""Which model family a checkpoint's keys and shapes belong to, without torch: the launcher checks a file's
safetensors header with this before a run starts, the loader checks the loaded tensors with the same rules.

The keys and shapes tested are the ones diffusers itself uses to tell families apart
(diffusers.loaders.single_file_utils.CHECKPOINT_KEY_NAMES). `state` maps names to anything with `.shape` and
`.ndim` (torch tensors, or the shapes of a safetensors header).
"""

from __future__ import annotations

from typing import Any, Mapping

UNET = "model.diffusion_model."
SD15_CROSS_ATTN_K = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  # [320, 768] in SD1.5
SD2_CROSS_ATTN_K = UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"  # [.., 1024] in SD2
CLIP_L = "cond_stage_model.transformer."  # SD1.x's text encoder
OPEN_CLIP = "cond_stage_model.model."  # SD2.x's text encoder
SDXL = "conditioner.embedders."


def detect_family(state: Mapping[str, Any]) -> str:
    """'sd1', 'sd1-inpainting', 'sd2', 'sdxl', 'sd3-or-flux', 'lora', 'vae', 'diffusers-component' or 'unknown'."""
    keys = state.keys()
    if any(k.startswith(SDXL) for k in keys) or any(k.startswith(UNET + "label_emb") for k in keys):
        return "sdxl"
    if any(k.startswith(("lora_unet_", "lora_te", "unet.", "text_encoder.")) and "lora" in k for k in keys):
        return "lora"
    if any(k.startswith(OPEN_CLIP) for k in keys):
        return "sd2"
    if SD2_CROSS_ATTN_K in state and state[SD2_CROSS_ATTN_K].shape[-1] == 1024:
        return "sd2"
    if any(k.startswith((UNET + "joint_blocks", UNET + "double_blocks", "double_blocks", "joint_blocks")) for k in keys):
        return "sd3-or-flux"
    if SD15_CROSS_ATTN_K in state or any(k.startswith(UNET + "input_blocks") for k in keys):
        conv_in = state.get(UNET + "input_blocks.0.0.weight")
        if conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] == 9:
            return "sd1-inpainting"
        return "sd1"  # 768-wide cross-attention (SD2's 1024 was caught above; tiny test models are narrower)
    if any(k.startswith(CLIP_L) for k in keys) or any(k.startswith("first_stage_model.") for k in keys):
        return "sd1"  # parts of an SD1 checkpoint; check_sd15 names what is missing
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "vae"
    if any(k.startswith(("down_blocks.", "text_model.", "encoder.layers.")) for k in keys):
        return "diffusers-component"
    return "unknown"
