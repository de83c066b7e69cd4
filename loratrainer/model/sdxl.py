"""Load an SDXL base model (SDXL 1.0 and its fine-tunes: Pony, Illustrious, NoobAI) from a diffusers folder, a
single-file checkpoint in the original (SGM) layout, or a hub id.

As for SD1.5 (model.loading), local models never touch the network: a single file is converted by diffusers'
own converters with our shipped SDXL base 1.0 configs (loratrainer/assets/sdxl) passed as `config=`, and both
CLIP tokenizers are built from the SD1.5 asset's vocabulary with SDXL's tokenizer configs (shipped_tokenizer).
sd-scripts' sdxl_model_util.load_models_from_sdxl_checkpoint builds the same four models from the same keys (its
text encoder 2 is transformers' CLIPTextModelWithProjection, converted from OpenCLIP like here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from tokenizers.models import BPE
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from loratrainer.config import ModelSettings
from loratrainer.messages import Msg
from loratrainer.model.assets import SD15_CONFIG_DIR, SDXL_CONFIG_DIR
from loratrainer.model.checkpoint import CHECKPOINT_SUFFIXES, read_checkpoint
from loratrainer.model.errors import ModelFileMissing, NotSD15Checkpoint, parts_msg
from loratrainer.model.families import SDXL, UNET, detect_family
from loratrainer.model.loading import (
    HUB_ID, TOKENIZER_FILES, check_tokenizer_fits, from_hub, legacy_file_hash, load_vae, noise_scheduler,
)

# its messages (model.sdxl.*) are defined in model/errors.py, torch-free: a run that ends with one, the GUI says

# the original layout's parts (sd-scripts sdxl_model_util: conditioner.embedders.0 = CLIP ViT-L, .1 = OpenCLIP bigG)
TEXT_ENCODER_1 = SDXL + "0.transformer."
TEXT_ENCODER_2 = SDXL + "1.model."
VAE = "first_stage_model."


class NotSDXLCheckpoint(NotSD15Checkpoint):
    """A readable checkpoint that is not an SDXL base model (the loader was asked for SDXL)."""


@dataclass
class SDXLComponents:
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer  # pads with "!" (id 0), as SDXL's tokenizer_2
    text_encoder: CLIPTextModel  # CLIP ViT-L/14 (sd-scripts' text_encoder1, Kohya names lora_te1_)
    text_encoder_2: CLIPTextModelWithProjection  # OpenCLIP ViT-bigG/14 (text_encoder2, lora_te2_); pooled = text_embeds
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    source: str  # how it was loaded, for the log: "diffusers folder /x", "single file /x.safetensors", "hub id a/b"
    model_name: str  # Kohya's ss_sd_model_name: the file or folder name, or the hub id
    model_hash: str  # A1111's legacy 8-hex hash of a single file (Kohya's ss_sd_model_hash); "" otherwise
    # what the model itself says about its prediction: "v_prediction" (a folder's scheduler config, or the empty
    # v_pred marker tensor v-pred fine-tunes such as NoobAI-XL V-Pred carry), "epsilon", or "" (it says nothing)
    declared_prediction: str = ""
    declared_zero_terminal_snr: bool = False  # the ztsnr marker tensor of such files

    family = "sdxl"  # class attribute: model.lora and model.metadata read it (SD15Components has "sd15")


def load_sdxl(settings: ModelSettings, *, dtype: torch.dtype = torch.float32, config_dir: Path | None = None,
              state: dict[str, torch.Tensor] | None = None) -> SDXLComponents:
    """The four models, frozen, both tokenizers and the training noise scheduler. `config_dir` replaces the shipped
    SDXL configs for single files (tests use it for tiny models); it must be a diffusers-layout folder. `state`:
    the single file's tensors when the caller has already read them (model.components does, for .ckpt files)."""
    config_dir = Path(config_dir) if config_dir else SDXL_CONFIG_DIR
    source = settings.pretrained_model_name_or_path.strip()
    path = Path(os.path.expanduser(source))
    prediction, ztsnr = "", False
    if path.is_dir():
        parts = _load_diffusers(str(path), dtype, local_only=True)
        how, name, model_hash = f"diffusers folder {path}", path.name, ""
        prediction = _folder_prediction(path)
    elif path.is_file():
        state = state if state is not None else read_checkpoint(path)
        parts = _load_single_file(state, path, dtype, config_dir)
        how, name, model_hash = f"single file {path}", path.name, legacy_file_hash(path)
        prediction = "v_prediction" if "v_pred" in state else ""
        ztsnr = "ztsnr" in state
        del state
    elif HUB_ID.fullmatch(source) and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        parts = from_hub(lambda: _load_diffusers(source, dtype, local_only=False), source)
        how, name, model_hash = f"hub id {source}", source, ""
    else:
        raise ModelFileMissing(Msg.of("model.sdxl.missing", path=source))
    tokenizer, tokenizer_2, text_encoder, text_encoder_2, vae, unet = parts
    if settings.vae.strip():
        vae = load_vae(settings.vae.strip(), dtype=dtype, config_dir=config_dir, family="sdxl")
    for model in (text_encoder, text_encoder_2, vae, unet):
        model.requires_grad_(False)  # the LoRA adapters are the only trainable weights
    return SDXLComponents(
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        vae=vae,
        unet=unet,
        # sd-scripts' SDXL training schedule is SD1.5's (sdxl_train_util / train_network.py build the same DDPMScheduler)
        noise_scheduler=noise_scheduler(v_prediction=settings.v_parameterization),
        source=how,
        model_name=name,
        model_hash=model_hash,
        declared_prediction=prediction,
        declared_zero_terminal_snr=ztsnr,
    )


def check_sdxl(state, path: str | Path) -> None:
    """Raise NotSDXLCheckpoint unless `state` (tensors or header shapes) is a complete SDXL base checkpoint."""
    family = detect_family(state)
    if family != "sdxl":
        raise NotSDXLCheckpoint(Msg.of("model.sdxl.not_sdxl", path=str(path), family=family))
    parts = ((UNET, "unet"), (TEXT_ENCODER_1, "text_encoder_1"), (TEXT_ENCODER_2, "text_encoder_2"), (VAE, "vae"))
    missing = [what for prefix, what in parts if not any(k.startswith(prefix) for k in state)]
    if missing:
        raise NotSDXLCheckpoint(Msg.of("model.sdxl.incomplete", path=str(path), missing=parts_msg(missing)))


def _load_single_file(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype, config_dir: Path):
    check_sdxl(state, path)
    kwargs = dict(config=str(config_dir), local_files_only=True, torch_dtype=dtype)
    try:
        unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_single_file(state, subfolder="vae", **kwargs)
        text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder", **kwargs)
        text_encoder_2 = create_diffusers_clip_model_from_ldm(
            CLIPTextModelWithProjection, state, subfolder="text_encoder_2", **kwargs)
    except (ValueError, KeyError, RuntimeError) as exc:  # shapes that do not fit SDXL base's configuration
        raise NotSDXLCheckpoint(Msg.of("model.sdxl.shapes", path=str(path), detail=str(exc)[:300])) from exc
    tokenizer, tokenizer_2 = (_folder_tokenizer(config_dir / sub, sub) for sub in ("tokenizer", "tokenizer_2"))
    # checkpoints are usually fp16; the caller's dtype wins whatever the file holds
    return (tokenizer, tokenizer_2, text_encoder.to(dtype), text_encoder_2.to(dtype), vae.to(dtype), unet.to(dtype))


def _load_diffusers(source: str, dtype: torch.dtype, *, local_only: bool):
    folder = Path(source)
    if local_only and not ((folder / "model_index.json").exists() or (folder / "unet").is_dir()):
        raise NotSDXLCheckpoint(Msg.of("model.sdxl.not_a_folder_model", path=str(folder)))
    kw = dict(torch_dtype=dtype, local_files_only=local_only)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **kw)
    tokenizers = []
    for sub, encoder in (("tokenizer", text_encoder), ("tokenizer_2", text_encoder_2)):
        # whatever tokenizer files the folder has (current transformers saves only tokenizer.json); a hub repo or
        # a folder without any gets the shipped one (the shipped tokenizer_2 pads with "!" as SDXL's does)
        own = folder / sub
        has_own = local_only and any((own / name).is_file() for name in TOKENIZER_FILES)
        tokenizer = CLIPTokenizer.from_pretrained(own) if has_own else shipped_tokenizer(sub)
        check_tokenizer_fits(tokenizer, encoder, own if has_own else Path(f"the shipped SDXL {sub}"), source)
        tokenizers.append(tokenizer)
    return (*tokenizers, text_encoder, text_encoder_2, vae, unet)


def shipped_tokenizer(sub: str) -> CLIPTokenizer:
    """The shipped SDXL `tokenizer` or `tokenizer_2`. Both use CLIP's BPE vocabulary, which the SD1.5 asset
    already ships (assets/sd15/tokenizer: vocab.json, merges.txt), so assets/sdxl holds only each one's
    tokenizer_config.json (tokenizer_2 pads with "!", id 0) and the tokenizer is built from the two."""
    config = json.loads((SDXL_CONFIG_DIR / sub / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("tokenizer_class", None)  # what to build, not an argument of it
    vocab, merges = BPE.read_file(str(SD15_CONFIG_DIR / "tokenizer" / "vocab.json"), str(SD15_CONFIG_DIR / "tokenizer" / "merges.txt"))
    return CLIPTokenizer(vocab=vocab, merges=merges, **config)


def _folder_tokenizer(folder: Path, sub: str) -> CLIPTokenizer:
    """A config folder's own tokenizer where it has one (tests' tiny configs, saved by save_pretrained), else the
    shipped one (the shipped configs' folder holds no vocabulary of its own: shipped_tokenizer)."""
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return CLIPTokenizer.from_pretrained(folder)
    return shipped_tokenizer(sub)


def _folder_prediction(folder: Path) -> str:
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(config.get("prediction_type") or "")
