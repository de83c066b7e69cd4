"""A tiny SDXL built from config with the real SDXL classes, for tests and benches (no pytest).

Same architecture family as SDXL base 1.0: UNet2DConditionModel with addition_embed_type="text_time" (the pooled
text embedding plus the six size/crop numbers), a plain first block and cross-attention blocks with several
transformer layers, linear proj_in/proj_out; two text encoders, CLIPTextModel (CLIP ViT-L's place) and
CLIPTextModelWithProjection (OpenCLIP ViT-bigG's place, gelu) whose hidden states are concatenated for
cross-attention; the two real CLIP tokenizers (tokenizer_2 pads with "!"); a 4-block AutoencoderKL with SDXL's
scaling factor. Only the widths are tiny: 64x64 images give 8x8 latents.

    components = build_tiny_sdxl(seed=0)                         # in memory
    folder = save_tiny_sdxl_diffusers(tmp / "tiny-xl")           # StableDiffusionXLPipeline.from_pretrained works
    ckpt = save_tiny_sdxl_single_file(tmp / "tiny-xl.safetensors")  # the original (SGM) layout users download
    vpred = save_tiny_sdxl_single_file(tmp / "v.safetensors", v_prediction=True)  # + the v_pred/ztsnr markers

The single file is in the original layout SDXL checkpoints are distributed in: model.diffusion_model.*,
conditioner.embedders.0.transformer.* (CLIP-L, transformers' names), conditioner.embedders.1.model.* (OpenCLIP:
fused attn.in_proj, ln_1/ln_2, mlp.c_fc/c_proj, text_projection transposed), first_stage_model.*. diffusers only
converts original -> diffusers, so the reverse mapping is written here (the UNet and VAE parts are tiny_sd's,
which are general); tests/test_model_sdxl.py loads the file back through diffusers' own converter. Loading a tiny
single file needs the tiny configs: pass `tiny_sdxl_config_dir()` as the loader's config folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from loratrainer.model.assets import SDXL_CONFIG_DIR
from loratrainer.model.sdxl import shipped_tokenizer
from tests.tiny_sd import unet_key_to_ldm, vae_key_to_ldm

IMAGE_SIZE = 64  # pixels; latents are IMAGE_SIZE // 8
TEXT1_HIDDEN = 32  # CLIP ViT-L's place (768 in SDXL)
TEXT2_HIDDEN = 48  # OpenCLIP ViT-bigG's place (1280); must differ from TEXT1_HIDDEN, diffusers tells them apart by width
TIME_EMBED = 8  # addition_time_embed_dim (256 in SDXL)

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,  # as SDXL: input_blocks/output_blocks numbering is SDXL's
    # SDXL's pattern: no attention in the outermost block, cross-attention with several transformer layers inside
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),  # the inner block and the mid block get 2 (SDXL: 1, 2, 10)
    cross_attention_dim=TEXT1_HIDDEN + TEXT2_HIDDEN,  # both encoders' hidden states, concatenated
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED,
    projection_class_embeddings_input_dim=TEXT2_HIDDEN + 6 * TIME_EMBED,  # pooled text + 6 size/crop numbers
    norm_num_groups=32,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 8, 16, 16),  # four blocks: latents are 1/8 of the image
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=IMAGE_SIZE,
    scaling_factor=0.13025,  # SDXL's VAE
    force_upcast=True,
)
_TEXT_COMMON = dict(
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=49408,  # the real vocabulary, so the real tokenizers' ids fit
    max_position_embeddings=77,
    bos_token_id=0,
    eos_token_id=2,  # as in SDXL's text_encoder*/config.json
    pad_token_id=1,
)
TEXT1_CONFIG = dict(_TEXT_COMMON, hidden_size=TEXT1_HIDDEN, projection_dim=TEXT1_HIDDEN, hidden_act="quick_gelu")
TEXT2_CONFIG = dict(_TEXT_COMMON, hidden_size=TEXT2_HIDDEN, projection_dim=TEXT2_HIDDEN, hidden_act="gelu")
# SDXL's training schedule (sd-scripts' DDPMScheduler arguments, the same numbers as SD1.5)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
)


@dataclass
class TinySDXL:
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    scheduler: EulerDiscreteScheduler

    family = "sdxl"  # as model.sdxl.SDXLComponents: model.lora and model.metadata read it

    def pipeline(self) -> StableDiffusionXLPipeline:
        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=self.scheduler,
            add_watermarker=False,
        )


def build_tiny_sdxl(seed: int = 0, *, v_prediction: bool = False) -> TinySDXL:
    """Fresh tiny models with deterministic random weights. `v_prediction` sets the inference scheduler's
    prediction_type (what a v-pred fine-tune's diffusers folder says)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT1_CONFIG))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT2_CONFIG))
    prediction = "v_prediction" if v_prediction else "epsilon"
    scheduler = EulerDiscreteScheduler.from_pretrained(SDXL_CONFIG_DIR, subfolder="scheduler", prediction_type=prediction)
    return TinySDXL(
        tokenizer=shipped_tokenizer("tokenizer"),
        tokenizer_2=shipped_tokenizer("tokenizer_2"),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        vae=vae.eval(),
        unet=unet.eval(),
        noise_scheduler=DDPMScheduler(**SCHEDULER_CONFIG, prediction_type=prediction),
        scheduler=scheduler,
    )


def save_tiny_sdxl_diffusers(folder: str | Path, seed: int = 0, *, v_prediction: bool = False) -> Path:
    """A complete diffusers folder (model_index.json + components) that StableDiffusionXLPipeline.from_pretrained
    loads, written by the current diffusers/transformers save_pretrained."""
    folder = Path(folder)
    build_tiny_sdxl(seed, v_prediction=v_prediction).pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_sdxl_config_dir(folder: str | Path) -> Path:
    """Configs only (no weights), in diffusers layout: what the single-file loader needs for the tiny model."""
    folder = Path(folder)
    save_tiny_sdxl_diffusers(folder)
    for weights in folder.glob("*/*.safetensors"):
        weights.unlink()
    return folder


def save_tiny_sdxl_single_file(path: str | Path, seed: int = 0, *, v_prediction: bool = False,
                               dtype: torch.dtype = torch.float32) -> Path:
    """The tiny model as one checkpoint in the original (SGM) layout; .ckpt -> torch pickle, else safetensors.

    `v_prediction` adds the empty `v_pred` and `ztsnr` marker tensors v-pred fine-tunes (NoobAI-XL v-pred) carry
    and ComfyUI reads (comfy/model_detection.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tiny_sdxl_ldm_state_dict(build_tiny_sdxl(seed)).items()}
    if v_prediction:
        state["v_pred"] = torch.tensor([])
        state["ztsnr"] = torch.tensor([])
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 0}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def tiny_sdxl_ldm_state_dict(components) -> dict[str, torch.Tensor]:
    """Any SDXL-architecture components (tiny or full size) in the original layout's keys."""
    state: dict[str, torch.Tensor] = {}
    config = components.unet.config
    layers = config.layers_per_block
    up_has_attn = ["CrossAttn" in t for t in config.up_block_types]
    for key, value in components.unet.state_dict().items():
        state["model.diffusion_model." + sdxl_unet_key_to_ldm(key, layers, up_has_attn)] = value
    n_blocks = len(components.vae.config.block_out_channels)
    for key, value in components.vae.state_dict().items():
        ldm_key = vae_key_to_ldm(key, n_blocks)
        if ".mid.attn_1." in ldm_key and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE's attention uses 1x1 convs
        state["first_stage_model." + ldm_key] = value
    for key, value in components.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; the original checkpoints keep the text_model. level
        key = key if key.startswith("text_model.") else "text_model." + key
        state["conditioner.embedders.0.transformer." + key] = value
    # real SDXL files carry this buffer (transformers no longer saves it); loaders must cope with it
    state["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state.update(open_clip_state_dict(components.text_encoder_2, "conditioner.embedders.1.model."))
    return state


def sdxl_unet_key_to_ldm(key: str, layers: int, up_has_attn: list[bool]) -> str:
    """tiny_sd's inverse of diffusers' UNet conversion, plus SDXL's size/pooled-text embedding (label_emb)."""
    for new, old in (("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2.")):
        if key.startswith(new):
            return old + key[len(new):]
    return unet_key_to_ldm(key, layers, up_has_attn)


def open_clip_state_dict(model: CLIPTextModelWithProjection, prefix: str) -> dict[str, torch.Tensor]:
    """transformers' CLIPTextModelWithProjection -> OpenCLIP's text tower keys (the inverse of diffusers'
    convert_open_clip_checkpoint): q/k/v fused into attn.in_proj_*, text_projection stored transposed."""
    sd = {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
          for k, v in model.state_dict().items()}
    out = {
        prefix + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        prefix + "text_projection": sd["text_projection.weight"].T.contiguous(),
        prefix + "logit_scale": torch.tensor(4.6052),  # OpenCLIP's ln(100); real files carry it, loaders ignore it
    }
    for i in range(model.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{theirs}.{kind}"] = sd[f"{src}{ours}.{kind}"]
    return out
