"""A model's weights read one tensor at a time: a single-file checkpoint or a diffusers folder, by Kohya name.

extract and merge-into never load a whole model: they open the weight files here (safetensors: memory-mapped;
a .ckpt/.bin zip archive: torch.load with mmap) and read one tensor when it is needed, so memory stays near the
largest module. Which modules exist and their shapes come from the model's configs, built on the meta device
(no weights): the folder's own unet/ and text_encoder/ configs, or for a single file the shipped SD1.5 configs
(or the folder given with --model-config). Kohya names are diffusers module paths with `_` for `.`
(model/lora.kohya_name); a single file's LDM keys are mapped to them by tools/ldm_names.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loratrainer.model.assets import SD15_CONFIG_DIR
from loratrainer.model.checkpoint import SAFETENSORS_SUFFIXES, check_sd15, read_checkpoint
from loratrainer.model.errors import CorruptModelFile, ModelFileMissing, NonFiniteLoraError, NotSD15Checkpoint
from loratrainer.model.safetensors_header import HeaderError, is_regular_file, read_header
from loratrainer.tools.messages import tool_error

if TYPE_CHECKING:
    from loratrainer.model.lora import Part

PARTS: tuple[Part, ...] = ("unet", "text_encoder")
SDXL_PARTS: tuple[Part, ...] = ("unet", "text_encoder", "text_encoder_2")
# the weight file names diffusers and transformers save, preferred in this order (a variant such as .fp16 last)
WEIGHT_NAMES = {"unet": ("diffusion_pytorch_model",), "text_encoder": ("model", "pytorch_model"), "text_encoder_2": ("model", "pytorch_model"),
                "vae": ("diffusion_pytorch_model",)}


class TensorFile:
    """One weights file opened for reading tensor by tensor."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        self.metadata: dict[str, str] = {}
        self._state: dict[str, torch.Tensor] | None = None
        if not is_regular_file(path):  # a FIFO or a device is never opened (docs/reliability.md)
            raise CorruptModelFile(tool_error("unreadable_model", path=str(path), detail="not a regular file"))
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            try:
                read_header(path)
            except HeaderError as exc:
                raise CorruptModelFile(tool_error("unreadable_model", path=str(path), detail=exc.detail or exc.reason)) from exc
            try:
                self._handle = safe_open(str(path), framework="pt", device="cpu")
            except (SafetensorError, OSError, ValueError) as exc:
                raise CorruptModelFile(tool_error("unreadable_model", path=str(path), detail=str(exc)[:200])) from exc
            self.keys = list(self._handle.keys())
            self.metadata = dict(self._handle.metadata() or {})
        else:  # .ckpt / .bin: torch.load, memory-mapped when it is a zip archive (what torch.save writes)
            self._state = read_checkpoint(path)
            self.keys = list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._state is not None:
            return tuple(self._state[key].shape)
        return tuple(self._handle.get_slice(key).get_shape())

    def shape_dict(self) -> dict[str, torch.Tensor]:
        """Names and shapes only (meta tensors), for check_sd15."""
        return {k: torch.empty(self.shape(k), device="meta") for k in self.keys}

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor as stored; a non-finite one is refused (merge-into and extract never build on NaN)."""
        t = self._state[key] if self._state is not None else self._handle.get_tensor(key)
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NonFiniteLoraError(tool_error("model_non_finite", path=str(self.path), key=key))
        return t


def component_files(folder: Path, part: str) -> list[Path]:
    """The weight files of a diffusers component folder (all shards of a sharded one)."""
    for ext in (".safetensors", ".bin"):
        for stem in WEIGHT_NAMES[part]:
            index = folder / f"{stem}{ext}.index.json"
            if index.is_file():
                try:
                    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
                except (ValueError, KeyError, TypeError) as exc:
                    raise CorruptModelFile(tool_error("unreadable_model", path=str(index), detail=str(exc)[:200])) from exc
                return [folder / s for s in shards]
            if (folder / f"{stem}{ext}").is_file():
                return [folder / f"{stem}{ext}"]
        variants = sorted(p for stem in WEIGHT_NAMES[part] for p in folder.glob(f"{stem}.*{ext}"))
        if variants:
            return variants[:1]  # e.g. diffusion_pytorch_model.fp16.safetensors
    raise ModelFileMissing(tool_error("component_missing", folder=str(folder)))


def meta_models(config_dir: Path):
    """SD1.5's UNet and text encoder on the meta device from a diffusers-layout config folder (no weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir, subfolder="unet"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    return {"unet": unet, "text_encoder": te}


def _read_config(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "layers_per_block" in data and "up_block_types" in data else None


class ModelWeights:
    """An SD1.5 or SDXL model (single file or diffusers folder): `weight(kohya_name)` reads one module's weight.
    SDXL's names and its second text encoder's fused q/k/v are tools/sdxl_names'."""

    def __init__(self, path: str | Path, *, config_dir: Path | None = None):
        from loratrainer.tools import sdxl_names

        self.path = Path(path)
        if not self.path.exists():
            raise ModelFileMissing(tool_error("model_missing", path=str(self.path)))
        # module name -> (file, key, rows of a fused weight or None)
        self._where: dict[str, tuple[TensorFile, str, tuple[int, int] | None]] = {}
        self.family = "sd1"
        if self.path.is_dir():
            self._check_folder()
            self.config_dir = self.path
            self.family = "sdxl" if (self.path / "text_encoder_2").is_dir() else "sd1"
            self.parts = SDXL_PARTS if self.family == "sdxl" else PARTS
            self._unet_config = _read_config(self.path / "unet" / "config.json") if self.family == "sdxl" else None
            self.files: dict[str, list[TensorFile]] = {}
            for part in self.parts:
                self.files[part] = [TensorFile(p) for p in component_files(self.path / part, part)]
                for f in self.files[part]:
                    for key in f.keys:
                        name = self.name_of(part, key)
                        if name is not None:
                            self._where[name] = (f, key, None)
        else:
            self.config_dir = Path(config_dir) if config_dir else SD15_CONFIG_DIR
            self.single = TensorFile(self.path)
            if sdxl_names.is_sdxl_single_file(self.single.keys):
                self.family = "sdxl"
                names = sdxl_names.kohya_names_of_single_file(self.single.keys, self.single.shape)
                for name, (key, rows) in names.items():
                    self._where[name] = (self.single, key, rows)
                return
            from loratrainer.tools.ldm_names import kohya_to_ldm

            check_sd15(self.single.shape_dict(), self.path)
            for name, key in kohya_to_ldm(self.single.keys, self.config_dir).items():
                self._where[name] = (self.single, key, None)

    def name_of(self, part: Part, key: str) -> str | None:
        """The Kohya name of a diffusers folder's weight key (None: not a module weight)."""
        if self.family == "sdxl":
            from loratrainer.tools.sdxl_names import kohya_name_of_folder_key

            return kohya_name_of_folder_key(part, key, self._unet_config)
        from loratrainer.model.lora import kohya_name

        return kohya_name(part, key[: -len(".weight")]) if key.endswith(".weight") else None

    def _check_folder(self) -> None:
        if not (self.path / "unet").is_dir() or not (self.path / "text_encoder").is_dir():
            raise NotSD15Checkpoint(tool_error("not_a_model_folder", path=str(self.path)))

    @cached_property
    def meta(self) -> dict[str, torch.nn.Module]:
        return meta_models(self.config_dir)

    def targets(self, *, conv: bool) -> list[tuple[str, str, torch.Size]]:
        """(part, Kohya name, weight shape) of the modules Kohya's LoRA adapts (conv: LoCon's 3x3 convolutions)."""
        if self.family == "sdxl":
            return self._sdxl_targets(conv)
        from loratrainer.model.lora import kohya_name, target_modules

        out: list[tuple[str, str, torch.Size]] = []
        for part in PARTS:
            if conv and part != "unet":
                continue
            model = self.meta[part]
            for path in target_modules(model, part, conv=conv):
                out.append((part, kohya_name(part, path), model.get_submodule(path).weight.shape))
        return out

    def _sdxl_targets(self, conv: bool) -> list[tuple[str, str, torch.Size]]:
        from loratrainer.errors import UserError
        from loratrainer.tools.sdxl_names import is_lora_target

        if conv:
            raise UserError(tool_error("sdxl_conv", path=str(self.path)))
        out = []
        for name, (f, key, rows) in self._where.items():
            if is_lora_target(name):
                shape = list(f.shape(key))
                if rows is not None:
                    shape[0] = rows[1] - rows[0]
                out.append(("unet" if name.startswith("lora_unet_") else "text_encoder", name, torch.Size(shape)))
        return out

    def has(self, name: str) -> bool:
        return name in self._where

    def weight(self, name: str, shape: torch.Size | None = None) -> torch.Tensor:
        """The module's weight as stored (its dtype), reshaped to `shape` (LDM's 1x1 convs vs Linear)."""
        if name not in self._where:
            raise NotSD15Checkpoint(tool_error("module_missing", path=str(self.path), module=name))
        f, key, rows = self._where[name]
        t = f.tensor(key)
        if rows is not None:  # q, k or v of SDXL's second text encoder's fused in_proj_weight
            t = t[rows[0]:rows[1]]
        if shape is not None and tuple(t.shape) != tuple(shape):
            if t.numel() != torch.Size(shape).numel():
                raise NotSD15Checkpoint(tool_error("module_shape", path=str(self.path), module=name,
                                                   shape=str(list(t.shape)), expected=str(list(shape))))
            t = t.reshape(shape)
        return t
