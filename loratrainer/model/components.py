"""The one loader the trainer calls: which family the base model is (from the model's own keys and config, never
its name) and that family's components. Each family's loading lives in its own module (model.loading for SD1.5,
model.sdxl for SDXL); a new family (Flux) adds its module and one line to LOADERS.

    components = load_components(config.model, dtype=torch.float16)   # SD15Components or SDXLComponents
    components.family                                                 # "sd15" | "sdxl"
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import torch

from loratrainer.config import ModelSettings
from loratrainer.messages import Msg
from loratrainer.errors import UserError
from loratrainer.model.checkpoint import SAFETENSORS_SUFFIXES, read_checkpoint
from loratrainer.model import errors as _errors  # noqa: F401  model.family_mismatch, said below
from loratrainer.model.families import detect_family
from loratrainer.model.loading import SD15Components, load_sd15
from loratrainer.model.sdxl import SDXLComponents, load_sdxl


Components = Union[SD15Components, SDXLComponents]
FAMILY_NAMES = {"sd15": "an SD1.5", "sdxl": "an SDXL"}
# file families (model.families.detect_family) that are trained as one of our families
_FILE_FAMILY = {"sd1": "sd15", "sdxl": "sdxl"}


def load_components(settings: ModelSettings, *, dtype: torch.dtype = torch.float32,
                    config_dir: Path | None = None) -> Components:
    """The base model's components for whichever family it is. `config_dir` replaces the shipped configs of that
    family for single files (tests pass a tiny model's folder). A file of no trainable family goes to the SD1.5
    loader, which names what it is (a LoRA, a VAE, SD2, ...)."""
    family, state = model_family(settings)
    wanted = settings.model_family
    if wanted != "auto" and family is not None and family != wanted:
        raise UserError(Msg.of("model.family_mismatch", wanted=wanted, wanted_a=FAMILY_NAMES[wanted],
                               path=settings.pretrained_model_name_or_path, found=family, found_a=FAMILY_NAMES[family]))
    family = family or (wanted if wanted != "auto" else "sd15")
    if family == "sdxl":
        return load_sdxl(settings, dtype=dtype, config_dir=config_dir, state=state)
    return load_sd15(settings, dtype=dtype, config_dir=config_dir)


def model_family(settings: ModelSettings) -> tuple[str | None, dict[str, torch.Tensor] | None]:
    """("sd15" | "sdxl" | None when not ours or not known, the file's tensors when they had to be read whole).

    A .safetensors file is told by its header alone (no tensor is read); a pickled .ckpt must be read whole, and
    its tensors are handed on so the loader does not read them again. A diffusers folder by its model_index.json
    or components; a hub id by model_index.json when the hub (or its cache) has it."""
    source = settings.pretrained_model_name_or_path.strip()
    path = Path(os.path.expanduser(source))
    if path.is_file():
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            shapes = _header_shapes(path)
            if shapes is not None:
                return _FILE_FAMILY.get(detect_family(shapes)), None
        state = read_checkpoint(path)
        return _FILE_FAMILY.get(detect_family(state)), state
    if path.is_dir():
        return folder_family(path), None
    return _hub_family(source), None


def folder_family(folder: Path) -> str | None:
    index = _read_json(folder / "model_index.json")
    name = str(index.get("_class_name", "")) if index else ""
    if "XL" in name or (folder / "text_encoder_2").is_dir():
        return "sdxl"
    unet = _read_json(folder / "unet" / "config.json") or {}
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd15" if index or unet else None


def _hub_family(source: str) -> str | None:
    try:
        from huggingface_hub import hf_hub_download

        index = _read_json(Path(hf_hub_download(source, "model_index.json")))
    except Exception:  # noqa: BLE001 - offline, no such repo: the SD1.5 loader says why in one sentence
        return None
    if not index:
        return None
    return "sdxl" if "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index else "sd15"


class _Shape:
    def __init__(self, shape):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)


def _header_shapes(path: Path) -> dict[str, _Shape] | None:
    """The tensor names and shapes of a .safetensors file from its JSON header; None when it is not readable
    (read_checkpoint then says why)."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < 100_000_000:
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError):
        return None
    return {k: _Shape(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
