"""merge-into: a checkpoint with LoRAs baked in (W' = W + sum_i w_i alpha_i/rank_i up_i @ down_i per module).

A single-file checkpoint is rewritten tensor by tensor in its own layout (original LDM keys, dtypes and
metadata kept: what A1111 and ComfyUI load), so memory stays near the largest tensor plus one module's LoRA
factors. `--diffusers DIR` loads the model whole (any input our loader takes) and saves a diffusers folder.
sd-scripts networks/merge_lora.py merge_to_sd_model does the same sum on a loaded model.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loratrainer.errors import UserError
from loratrainer.model.assets import SD15_CONFIG_DIR
from loratrainer.model.checkpoint import SAFETENSORS_SUFFIXES, check_sd15, read_checkpoint
from loratrainer.tools.ldm_names import kohya_to_ldm
from loratrainer.tools.lorafile import LoraFile, weight_shape
from loratrainer.tools.outputs import refuse_existing
from loratrainer.tools.progress import NO_PROGRESS, Progress
from loratrainer.tools.writer import StreamingSafetensorsWriter


@dataclass
class BakeReport:
    output: Path
    modules_changed: int
    loras: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"output": str(self.output), "modules_changed": self.modules_changed, "loras": self.loras}


class _Model:
    """A single-file checkpoint opened for reading tensor by tensor (safetensors: memory-mapped)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self.metadata: dict[str, str] = {}
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            self._handle = safe_open(str(path), framework="pt", device="cpu")
            self.keys = list(self._handle.keys())
            self.metadata = dict(self._handle.metadata() or {})
            self._state = None
        else:  # .ckpt: torch.load (memory-mapped when it is a zip archive)
            self._state = read_checkpoint(path)
            self.keys = list(self._state)

    def shape_dict(self) -> dict[str, torch.Tensor]:
        # names and shapes only (meta tensors), for check_sd15
        if self._state is not None:
            return {k: torch.empty(v.shape, device="meta") for k, v in self._state.items()}
        return {k: torch.empty(self._handle.get_slice(k).get_shape(), device="meta") for k in self.keys}

    def tensor(self, key: str) -> torch.Tensor:
        return self._state[key] if self._state is not None else self._handle.get_tensor(key)


def bake_into_checkpoint(model: str | Path, loras: list[tuple[Path, float]], output: str | Path, *,
                         config_dir: Path | None = None, progress: Progress = NO_PROGRESS) -> BakeReport:
    model, output = Path(model), refuse_existing(output)
    if model.is_dir():
        raise UserError(f"{model} is a diffusers folder; a single-file output needs a single-file model. Use "
                        "--diffusers OUT_DIR to write a diffusers folder instead.")
    if output.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise UserError(f"The output {output.name} must end in .safetensors (the checkpoint is written as safetensors).")
    source = _Model(model)
    check_sd15(source.shape_dict(), model)
    names = kohya_to_ldm(source.keys, Path(config_dir) if config_dir else SD15_CONFIG_DIR)
    files = _open_loras(loras)
    by_key: dict[str, list[tuple[LoraFile, str, float]]] = {}
    for f, weight in files:
        missing = [n for n in f.modules if n not in names]
        if missing:
            raise UserError(f"{f.path.name} adapts {len(missing)} modules that {model.name} does not have, e.g. "
                            f"{missing[0]}: it was made for another model family.")
        for n in f.modules:
            by_key.setdefault(names[n], []).append((f, n, weight))
    total = len(source.keys)
    with StreamingSafetensorsWriter(output) as writer:
        for i, key in enumerate(source.keys):
            progress.step(i, total, key)
            tensor = source.tensor(key)
            if key in by_key:
                tensor = _with_deltas(tensor, by_key[key])
            writer.add(key, tensor)
        progress.step(total, total, "")
        writer.finish(source.metadata)
    return BakeReport(output, len(by_key), [str(p) for p, _ in loras])


def bake_into_diffusers(model: str | Path, loras: list[tuple[Path, float]], output_dir: str | Path, *,
                        config_dir: Path | None = None, progress: Progress = NO_PROGRESS) -> BakeReport:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from loratrainer.config import ModelSettings
    from loratrainer.model.loading import load_sd15
    from loratrainer.model.lora import kohya_name

    output_dir = refuse_existing(output_dir)
    files = _open_loras(loras)
    progress.step(0, 3, "loading the model")
    parts = load_sd15(ModelSettings(pretrained_model_name_or_path=str(model)), config_dir=config_dir)
    modules = {}
    for part, net in (("unet", parts.unet), ("text_encoder", parts.text_encoder)):
        for name, sub in net.named_modules():
            if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)):
                modules[kohya_name(part, name)] = sub
    changed = set()
    progress.step(1, 3, "adding the LoRAs")
    with torch.no_grad():
        for f, weight in files:
            for n in f.modules:
                if n not in modules:
                    raise UserError(f"{f.path.name} adapts {n}, which {Path(model).name} does not have: it was made "
                                    "for another model family.")
                w = modules[n].weight
                w.copy_(_with_deltas(w, [(f, n, weight)]))
                changed.add(n)
    progress.step(2, 3, "saving")
    source = Path(model)
    scheduler_dir = source if (source / "scheduler").is_dir() else SD15_CONFIG_DIR
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                                   scheduler=PNDMScheduler.from_pretrained(scheduler_dir, subfolder="scheduler"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if output_dir.exists():
            raise UserError(f"{output_dir} appeared while saving; not replacing it.")
        tmp.rename(output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    progress.step(3, 3, "")
    return BakeReport(output_dir, len(changed), [str(p) for p, _ in loras])


def _open_loras(loras: list[tuple[Path, float]]) -> list[tuple[LoraFile, float]]:
    if not loras:
        raise UserError("Give at least one LoRA file to merge into the model.")
    files = [(LoraFile(p), float(w)) for p, w in loras]
    for f, _ in files:
        if f.format not in ("kohya", "diffusers-peft"):
            raise UserError(f"{f.path.name} is a {f.format} file; merge-into handles LoRA/LoCon files only.")
    return files


def _with_deltas(weight: torch.Tensor, deltas: list[tuple[LoraFile, str, float]]) -> torch.Tensor:
    # float32 and in place: the largest SD1.5 weight (10240 x 1280) then costs two float32 copies, not a chain of
    # float64 temporaries; diffusers' fuse_lora adds in float32 as well
    out = weight.to(torch.float32, copy=True)
    for f, name, w in deltas:
        down, up, scale = f.factors(name)
        if up.shape[0] * math.prod(down.shape[1:]) != out.numel():
            raise UserError(f"{f.path.name}: {name} has shape {list(weight_shape(down, up))} but the model's weight is "
                            f"{list(weight.shape)}: the LoRA was made for another model.")
        matrix = (up.reshape(up.shape[0], -1) * (w * scale)).float() @ down.reshape(down.shape[0], -1).float()
        out.add_(matrix.reshape(out.shape))
        del matrix
    return out.to(weight.dtype)
