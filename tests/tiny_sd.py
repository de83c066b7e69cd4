"""A tiny Stable Diffusion 1.5 built from config with the real SD1.5 classes, for tests and benches (no pytest).

Same architecture family as SD1.5 (CLIPTextModel, UNet2DConditionModel with cross-attention blocks and a plain
last block, a 4-block AutoencoderKL so latents are 1/8 of the image, SD1.5's scheduler settings and the real
CLIP tokenizer shipped in loratrainer/assets), only with tiny widths: images of 64x64 give 8x8 latents.

    components = build_tiny_components(seed=0)        # in memory
    folder = save_tiny_diffusers(tmp / "tiny")        # diffusers folder: StableDiffusionPipeline.from_pretrained works
    ckpt = save_tiny_single_file(tmp / "tiny.safetensors")   # the original LDM checkpoint layout users download

The single file is written in the original layout (model.diffusion_model.*, first_stage_model.*,
cond_stage_model.transformer.*). diffusers only converts LDM -> diffusers, so the reverse mapping is written
here; it is checked by loading the file back through diffusers' own converter (tests/test_model_loading.py).
Loading a tiny single file needs the tiny configs: pass `tiny_config_dir()` (or a saved diffusers folder) as
the loader's config folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from loratrainer.model.assets import SD15_CONFIG_DIR

TOKENIZER_DIR = SD15_CONFIG_DIR / "tokenizer"
TEXT_HIDDEN = 32
IMAGE_SIZE = 64  # pixels; latents are IMAGE_SIZE // 8

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    # SD1.5's pattern: attention in the outer blocks, none in the innermost (cf. DownBlock2D last in SD1.5)
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_HIDDEN,
    attention_head_dim=2,
    norm_num_groups=32,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    # four blocks like SD1.5's VAE, so the latent is 1/8 of the image as the trainer expects
    block_out_channels=(8, 8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=IMAGE_SIZE,
    scaling_factor=0.18215,
)
TEXT_CONFIG = dict(
    hidden_size=TEXT_HIDDEN,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=49408,  # the real vocabulary, so the real tokenizer's ids fit
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=TEXT_HIDDEN,
    bos_token_id=0,
    eos_token_id=2,  # as in SD1.5's text_encoder/config.json
    pad_token_id=1,
)
# SD1.5's training noise schedule (Kohya's DDPMScheduler arguments) and its inference scheduler
SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
)


@dataclass
class TinySD:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    scheduler: PNDMScheduler

    def pipeline(self) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def build_tiny_components(seed: int = 0) -> TinySD:
    """Fresh tiny models with deterministic random weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return TinySD(
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        unet=unet.eval(),
        noise_scheduler=DDPMScheduler(**SCHEDULER_CONFIG),
        scheduler=PNDMScheduler.from_pretrained(SD15_CONFIG_DIR, subfolder="scheduler"),
    )


def save_tiny_diffusers(folder: str | Path, seed: int = 0) -> Path:
    """A complete diffusers folder (model_index.json + components) that StableDiffusionPipeline.from_pretrained loads."""
    folder = Path(folder)
    build_tiny_components(seed).pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_config_dir(folder: str | Path) -> Path:
    """Configs only (no weights), in diffusers layout: what the single-file loader needs for the tiny model."""
    folder = Path(folder)
    save_tiny_diffusers(folder)
    for weights in folder.glob("*/*.safetensors"):
        weights.unlink()
    return folder


def save_tiny_single_file(path: str | Path, seed: int = 0) -> Path:
    """The tiny model as one checkpoint in the original (LDM) layout; .ckpt -> torch pickle, else safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_ldm_state_dict(build_tiny_components(seed))
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 0}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def tiny_ldm_state_dict(components: TinySD) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    layers = UNET_CONFIG["layers_per_block"]
    up_has_attn = ["CrossAttn" in t for t in UNET_CONFIG["up_block_types"]]
    for key, value in components.unet.state_dict().items():
        state["model.diffusion_model." + unet_key_to_ldm(key, layers, up_has_attn)] = value
    n_blocks = len(VAE_CONFIG["block_out_channels"])
    for key, value in components.vae.state_dict().items():
        ldm_key = vae_key_to_ldm(key, n_blocks)
        if ".mid.attn_1." in ldm_key and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention uses 1x1 convs
        state["first_stage_model." + ldm_key] = value
    for key, value in components.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; the original checkpoints keep the text_model. level
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    # real SD1.5 files carry this buffer (transformers no longer saves it); loaders must cope with it
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return state


_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def unet_key_to_ldm(key: str, layers: int, up_has_attn: list[bool]) -> str:
    """Inverse of diffusers' convert_ldm_unet_checkpoint for an SD1.5-style UNet of any width/depth."""
    for new, old in _UNET_TOP.items():
        if key.startswith(new):
            return old + key[len(new):]
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        kind, block, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down_blocks":
            if part == "downsamplers":
                return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{rest.removeprefix('conv.')}"
            index = 1 + block * (layers + 1) + j
            return f"input_blocks.{index}.{'0' if part == 'resnets' else '1'}.{_resnet(rest, part)}"
        if part == "upsamplers":
            return f"output_blocks.{block * (layers + 1) + layers}.{2 if up_has_attn[block] else 1}.{rest}"
        return f"output_blocks.{block * (layers + 1) + j}.{'0' if part == 'resnets' else '1'}.{_resnet(rest, part)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, j, rest = m.groups()
        index = 2 * int(j) if part == "resnets" else 1
        return f"middle_block.{index}.{_resnet(rest, part)}"
    raise KeyError(f"no LDM name for UNet key {key}")


def _resnet(rest: str, part: str) -> str:
    if part != "resnets":
        return rest
    for new, old in _UNET_RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


_VAE_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def vae_key_to_ldm(key: str, n_blocks: int) -> str:
    """Inverse of diffusers' convert_ldm_vae_checkpoint."""
    key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut", "nin_shortcut")
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        side, part, j, rest = m.groups()
        if part == "resnets":
            return f"{side}.mid.block_{int(j) + 1}.{rest}"
        for new, old in _VAE_ATTN.items():
            if rest.startswith(new):
                return f"{side}.mid.attn_1.{old}{rest[len(new):]}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.*)", key)
    if m:
        i, part, j, rest = m.groups()
        return f"encoder.down.{i}.block.{j}.{rest}" if j is not None else f"encoder.down.{i}.downsample.{rest}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", key)
    if m:
        i, part, j, rest = m.groups()
        ldm_i = n_blocks - 1 - int(i)  # LDM numbers the decoder's blocks from the lowest resolution up
        return f"decoder.up.{ldm_i}.block.{j}.{rest}" if j is not None else f"decoder.up.{ldm_i}.upsample.{rest}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names
