"""Reading a single-file checkpoint and telling which model family it is, before diffusers sees it.

diffusers converts whatever it is given and fails late with KeyErrors or shape errors; users deserve
"this is an SDXL checkpoint" instead. The keys and shapes tested here are the ones diffusers itself uses to
tell families apart (diffusers.loaders.single_file_utils.CHECKPOINT_KEY_NAMES).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from loratrainer.model.errors import CorruptModelFile, ModelFileMissing, NotSD15Checkpoint

SAFETENSORS_SUFFIXES = {".safetensors", ".sft"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES

UNET = "model.diffusion_model."
SD15_CROSS_ATTN_K = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  # [320, 768] in SD1.5
SD2_CROSS_ATTN_K = UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"  # [.., 1024] in SD2
CLIP_L = "cond_stage_model.transformer."  # SD1.x's text encoder
OPEN_CLIP = "cond_stage_model.model."  # SD2.x's text encoder
SDXL = "conditioner.embedders."


def read_checkpoint(path: str | Path, *, what: str = "model") -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors or .ckpt file on the CPU, or a UserError saying why not."""
    path = Path(path)
    if not path.exists():
        raise ModelFileMissing(f"The {what} file {path} does not exist.")
    if path.is_dir():
        raise CorruptModelFile(f"The {what} path {path} is a folder, not a checkpoint file.")
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES or _starts_like_safetensors(path):
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except (SafetensorError, OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptModelFile(
            f"The {what} file {path} cannot be read ({_short(exc)}). It may be an incomplete download; "
            "download it again (.safetensors is the safer format)."
        ) from exc
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CorruptModelFile(
                f"The {what} file {path} holds Python objects besides its weights, so it is not loaded "
                "(loading them could run code). Use the .safetensors version of this model."
            ) from exc
        raise CorruptModelFile(f"The {what} file {path} is not a checkpoint ({_short(exc)}).") from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning checkpoints nest the weights
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptModelFile(f"The {what} file {path} holds no tensors.")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_sd15(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise NotSD15Checkpoint naming the family when `state` is not a full SD1.x checkpoint."""
    family = detect_family(state)
    if family == "sd1":
        missing = [part for prefix, part in ((UNET, "UNet"), (CLIP_L, "text encoder"), ("first_stage_model.", "VAE"))
                   if not any(k.startswith(prefix) for k in state)]
        if missing:
            raise NotSD15Checkpoint(
                f"{path} is an SD1.x checkpoint without its {' and '.join(missing)} weights; use a full model file."
            )
        return
    hints = {
        "sdxl": "an SDXL checkpoint; loratrainer trains SD1.5 LoRAs only. Choose an SD1.5-based model",
        "sd2": "a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder, 1024-wide cross-attention); "
        "loratrainer trains SD1.5 LoRAs only. Choose an SD1.5-based model",
        "sd1-inpainting": "an SD1.5 inpainting checkpoint (9 input channels); choose an ordinary SD1.5 model",
        "sd3-or-flux": "an SD3 or Flux checkpoint; loratrainer trains SD1.5 LoRAs only",
        "lora": "a LoRA file, not a base model. Put it in network_weights to continue training it, "
        "and choose an SD1.5 base model here",
        "vae": "a VAE on its own; set it as the separate VAE and choose a full SD1.5 model here",
        "diffusers-component": "a single diffusers component file; choose the whole diffusers folder "
        "(the one with model_index.json) or a single-file checkpoint",
    }
    what = hints.get(family, "not a Stable Diffusion checkpoint this program recognises")
    raise NotSD15Checkpoint(f"{path} is {what}.")


def detect_family(state: dict[str, torch.Tensor]) -> str:
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


def _starts_like_safetensors(path: Path) -> bool:
    # safetensors: 8-byte little-endian header length then '{'; a renamed file is still read as what it is
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
