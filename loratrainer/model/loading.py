"""Load an SD1.5 base model from a diffusers folder, a single-file checkpoint, or a hub id.

Local models never touch the network: a single file is converted by diffusers with our shipped SD1.5 configs and
CLIP tokenizer (loratrainer/assets/sd15) passed as `config=`, so diffusers has no reason to ask the hub (Kohya
fetches openai/clip-vit-large-patch14 on every run and fails offline; docs/kohya-compat.md section 8 item 2).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from transformers import CLIPTextModel, CLIPTokenizer

from loratrainer.config import ModelSettings
from loratrainer.errors import UserError
from loratrainer.messages import Msg
from loratrainer.model.assets import SD15_CONFIG_DIR
from loratrainer.model.checkpoint import CHECKPOINT_SUFFIXES, check_sd15, detect_family, read_checkpoint
from loratrainer.model.errors import ModelFileMissing, ModelNotAvailableOffline, NotSD15Checkpoint

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_ID = _HUB_ID  # shared with model.sdxl
# Hub repositories that were removed, and their maintained copies (same files): older configs keep working.
HUB_MOVED = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}


@dataclass
class SD15Components:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    source: str  # how it was loaded, for the log: "diffusers folder /x", "single file /x.safetensors", "hub id a/b"
    model_name: str  # Kohya's ss_sd_model_name: the file or folder name, or the hub id
    model_hash: str  # A1111's legacy 8-hex hash of a single file (Kohya's ss_sd_model_hash); "" otherwise

    family = "sd15"  # class attribute: model.lora and model.metadata read it (SDXLComponents has "sdxl")


def load_sd15(settings: ModelSettings, *, dtype: torch.dtype = torch.float32, config_dir: Path | None = None) -> SD15Components:
    """The four models, frozen, plus the training noise scheduler. `config_dir` replaces the shipped SD1.5
    configs for single files (tests use it for tiny models); it must be a diffusers-layout folder."""
    config_dir = Path(config_dir) if config_dir else SD15_CONFIG_DIR
    source = settings.pretrained_model_name_or_path.strip()
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        parts = _load_diffusers(str(path), dtype, local_only=True)
        how, name, model_hash = f"diffusers folder {path}", path.name, ""
    elif path.is_file():
        parts = _load_single_file(path, dtype, config_dir)
        how, name, model_hash = f"single file {path}", path.name, legacy_file_hash(path)
    elif _HUB_ID.fullmatch(source) and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        source = HUB_MOVED.get(source, source)
        parts = _load_diffusers(source, dtype, local_only=False)
        how, name, model_hash = f"hub id {source}", source, ""
    else:
        raise ModelFileMissing(Msg.of("model.base_missing", source=source))
    tokenizer, text_encoder, vae, unet = parts
    if settings.vae.strip():
        vae = load_vae(settings.vae.strip(), dtype=dtype, config_dir=config_dir)
    for model in (text_encoder, vae, unet):
        model.requires_grad_(False)  # the LoRA adapters are the only trainable weights
    return SD15Components(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        noise_scheduler=noise_scheduler(v_prediction=settings.v_parameterization),
        source=how,
        model_name=name,
        model_hash=model_hash,
    )


def noise_scheduler(*, v_prediction: bool = False) -> DDPMScheduler:
    # SD1.5's training schedule, as Kohya builds it (independent of the inference scheduler a model folder ships)
    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def load_vae(source: str, *, dtype: torch.dtype = torch.float32, config_dir: Path = SD15_CONFIG_DIR,
             family: str = "sd15") -> AutoencoderKL:
    """A separate VAE: a .safetensors/.ckpt file (LDM or diffusers keys), a diffusers folder, or a hub id.
    `family` "sdxl": a whole SDXL checkpoint may serve as the VAE too (its first_stage_model), with SDXL's config."""
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").exists() else None
        return AutoencoderKL.from_pretrained(path, subfolder=sub, torch_dtype=dtype, local_files_only=True)
    if not path.is_file():
        if _HUB_ID.fullmatch(source) and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            return from_hub(lambda: AutoencoderKL.from_pretrained(source, torch_dtype=dtype), source)
        raise ModelFileMissing(Msg.of("model.vae_missing", source=source))
    state = read_checkpoint(path, what="VAE")
    found = detect_family(state)
    if found not in ("vae", "sdxl" if family == "sdxl" else "sd1"):
        code = "model.vae_other_family.sdxl" if family == "sdxl" else "model.vae_other_family.sd15"
        raise NotSD15Checkpoint(Msg.of(code, path=str(path), found=found))
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in state:  # already in diffusers' naming
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir, subfolder="vae"))
        _load_strict(vae, state, path)
        return vae.to(dtype)
    return AutoencoderKL.from_single_file(
        state, config=str(config_dir), subfolder="vae", local_files_only=True, torch_dtype=dtype
    )


def legacy_file_hash(path: Path) -> str:
    """A1111's old model hash, which Kohya writes as ss_sd_model_hash: sha256 of 64 KiB at 1 MiB, 8 hex digits."""
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


def _load_single_file(path: Path, dtype: torch.dtype, config_dir: Path):
    state = read_checkpoint(path)
    check_sd15(state, path)
    kwargs = dict(config=str(config_dir), local_files_only=True, torch_dtype=dtype)
    try:
        unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_single_file(state, subfolder="vae", **kwargs)
        text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder", **kwargs)
    except (ValueError, KeyError, RuntimeError) as exc:  # shapes that do not fit SD1.5's configuration
        raise NotSD15Checkpoint(Msg.of("model.not_sd15_architecture", path=str(path), detail=str(exc)[:300])) from exc
    tokenizer = CLIPTokenizer.from_pretrained(config_dir / "tokenizer")
    # checkpoints are often fp16; the caller's dtype wins whatever the file holds
    return tokenizer, text_encoder.to(dtype), vae.to(dtype), unet.to(dtype)


def _load_diffusers(source: str, dtype: torch.dtype, *, local_only: bool):
    folder = Path(source)
    if local_only and not ((folder / "model_index.json").exists() or (folder / "unet").is_dir()):
        raise NotSD15Checkpoint(Msg.of("model.not_diffusers_folder", folder=str(folder)))

    def load():
        kw = dict(torch_dtype=dtype, local_files_only=local_only)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
        # Whatever tokenizer files the folder has: current transformers saves only tokenizer.json, older ones
        # vocab.json + merges.txt. A hub repo or a folder without any gets the shipped SD1.5 tokenizer.
        own = folder / "tokenizer"
        has_tokenizer = local_only and any((own / name).is_file() for name in TOKENIZER_FILES)
        tokenizer = CLIPTokenizer.from_pretrained(own if has_tokenizer else SD15_CONFIG_DIR / "tokenizer")
        check_tokenizer_fits(tokenizer, text_encoder, own if has_tokenizer else Path("the shipped SD1.5 tokenizer"), source)
        return tokenizer, text_encoder, vae, unet

    parts = load() if local_only else from_hub(load, source)
    width = parts[3].config.cross_attention_dim
    if width in (1024, 2048):  # SD1.5 has 768 (tiny test models less); these two are SD2 and SDXL
        code = "model.wide_family.sd2" if width == 1024 else "model.wide_family.sdxl"
        raise NotSD15Checkpoint(Msg.of(code, source=source, width=width))
    return parts


TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


class TokenizerMismatch(NotSD15Checkpoint):
    """A tokenizer whose token ids do not all have an embedding in the text encoder."""


def check_tokenizer_fits(tokenizer, text_encoder, where: Path, source: str) -> None:
    """Every id the tokenizer can produce must index the text encoder's embeddings; otherwise the first step
    fails with `IndexError: index out of range in self` (docs/reliability.md, "Models")."""
    tokens = len(tokenizer)
    embeddings = text_encoder.get_input_embeddings().num_embeddings
    if tokens > embeddings:
        raise TokenizerMismatch(Msg.of("model.tokenizer_mismatch", where=str(where), tokens=tokens, source=source,
                                       embeddings=embeddings))


def from_hub(load, source: str):
    """`load()` for a hub id, with offline and hub failures said as one sentence."""
    try:
        return load()
    except (OSError, ValueError) as exc:  # huggingface_hub's errors derive from these
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or "offline" in str(exc).lower():
            raise ModelNotAvailableOffline(Msg.of("model.hub_offline", source=source)) from exc
        raise UserError(Msg.of("model.hub_failed", source=source, detail=str(exc)[:300])) from exc


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise NotSD15Checkpoint(Msg.of("model.lacks_weights", path=str(path), count=len(result.missing_keys),
                                       key=result.missing_keys[0]))
