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

from loratrainer.messages import ENGLISH, Msg
from loratrainer.model.errors import CorruptModelFile, ModelFileMissing, NotSD15Checkpoint, parts_msg
from loratrainer.model.families import CLIP_L, OPEN_CLIP, SD2_CROSS_ATTN_K, SD15_CROSS_ATTN_K, SDXL, UNET, detect_family  # noqa: F401  (re-exported)

SAFETENSORS_SUFFIXES = {".safetensors", ".sft"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES

_WHAT = {"model": "model", "LoRA": "lora", "LoRA (network_weights)": "network_weights", "VAE": "vae"}

def read_checkpoint(path: str | Path, *, what: str = "model") -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors or .ckpt file on the CPU, or a UserError saying why not."""
    path = Path(path)
    said = Msg.of("model.what." + _WHAT[what]) if what in _WHAT else what
    if not path.exists():
        raise ModelFileMissing(Msg.of("model.file_missing", what=said, path=str(path)))
    if path.is_dir():
        raise CorruptModelFile(Msg.of("model.is_folder", what=said, path=str(path)))
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES or _starts_like_safetensors(path):
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except (SafetensorError, OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptModelFile(Msg.of("model.unreadable", what=said, path=str(path), detail=_short(exc))) from exc
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CorruptModelFile(Msg.of("model.pickled_code", what=said, path=str(path))) from exc
        raise CorruptModelFile(Msg.of("model.not_a_checkpoint", what=said, path=str(path), detail=_short(exc))) from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning checkpoints nest the weights
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptModelFile(Msg.of("model.no_tensors", what=said, path=str(path)))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_sd15(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise NotSD15Checkpoint naming the family when `state` is not a full SD1.x checkpoint."""
    family = detect_family(state)
    if family == "sd1":
        missing = [part for prefix, part in ((UNET, "unet"), (CLIP_L, "text_encoder"), ("first_stage_model.", "vae"))
                   if not any(k.startswith(prefix) for k in state)]
        if missing:
            raise NotSD15Checkpoint(Msg.of("model.sd1_incomplete", path=str(path), missing=parts_msg(missing)))
        return
    code = f"model.family.{family}"
    raise NotSD15Checkpoint(Msg.of(code if code in ENGLISH else "model.family.unknown", path=str(path)))


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
