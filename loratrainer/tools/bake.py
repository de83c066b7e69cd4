"""merge-into: a checkpoint with LoRAs baked in (W' = W + sum_i w_i alpha_i/rank_i up_i @ down_i per module).

Nothing is loaded whole: the model is read and written tensor by tensor (tools/model_weights), so memory stays
near the largest tensor plus one module's LoRA factors.
- A single-file checkpoint keeps its own layout (original LDM keys, dtypes and metadata: what A1111 and ComfyUI
  load).
- `--diffusers DIR` from a diffusers folder: the folder is copied file by file, its unet/ and text_encoder/
  weight files rewritten as .safetensors with the deltas added.
- `--diffusers DIR` from a single file: each tensor is renamed to its diffusers key (tools/ldm_names, diffusers'
  own conversion) and written into the component it belongs to, with the shipped SD1.5 configs beside it.
sd-scripts networks/merge_lora.py merge_to_sd_model does the same sum on a loaded model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loratrainer.errors import UserError
from loratrainer.files import current_umask
from loratrainer.model.checkpoint import SAFETENSORS_SUFFIXES, check_sd15
from loratrainer.model.errors import ModelFileMissing, OutputExists
from loratrainer.tools.lorafile import LoraFile, weight_shape
from loratrainer.tools.messages import refuse_lycoris, tool_error
from loratrainer.tools.model_weights import WEIGHT_NAMES, ModelWeights, TensorFile, meta_models
from loratrainer.tools.outputs import refuse_existing
from loratrainer.tools.callbacks import NO_PROGRESS, Progress
from loratrainer.tools.writer import StreamingSafetensorsWriter

# weight key -> (file, module, weight, rows) to add to it; rows: the module's slice of a fused weight (SDXL's
# second text encoder keeps q, k and v in one in_proj_weight: tools/sdxl_names), None for the whole weight
Deltas = dict[str, list[tuple[LoraFile, str, float, "tuple[int, int] | None"]]]


@dataclass
class BakeReport:
    output: Path
    modules_changed: int
    loras: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"output": str(self.output), "modules_changed": self.modules_changed, "loras": self.loras}


def bake_into_checkpoint(model: str | Path, loras: list[tuple[Path, float]], output: str | Path, *,
                         config_dir: Path | None = None, progress: Progress = NO_PROGRESS) -> BakeReport:
    from loratrainer.model.assets import SD15_CONFIG_DIR
    from loratrainer.tools.ldm_names import kohya_to_ldm
    from loratrainer.tools.sdxl_names import is_sdxl_single_file, kohya_names_of_single_file

    model, output = Path(model), refuse_existing(output)
    if model.is_dir():
        raise UserError(tool_error("folder_needs_diffusers_output", path=str(model)))
    if output.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise UserError(tool_error("output_not_safetensors", name=output.name))
    files = _open_loras(loras)
    if not model.exists():
        raise ModelFileMissing(tool_error("model_missing", path=str(model)))
    source = TensorFile(model)
    if is_sdxl_single_file(source.keys):  # the original SDXL layout: sd-scripts' own names (tools/sdxl_names)
        by_key = _deltas_by_key(files, kohya_names_of_single_file(source.keys, source.shape), model)
    else:
        check_sd15(source.shape_dict(), model)
        names = kohya_to_ldm(source.keys, Path(config_dir) if config_dir else SD15_CONFIG_DIR)
        by_key = _deltas_by_key(files, {n: (k, None) for n, k in names.items()}, model)
    total = len(source.keys)
    with StreamingSafetensorsWriter(output) as writer:
        for i, key in enumerate(source.keys):
            progress.step(i, total, key)
            tensor = source.tensor(key)
            writer.add(key, _with_deltas(tensor, by_key[key]) if key in by_key else tensor)
        progress.step(total, total, "")
        writer.finish(source.metadata)
    return BakeReport(output, len(by_key), [str(p) for p, _ in loras])


def bake_into_diffusers(model: str | Path, loras: list[tuple[Path, float]], output_dir: str | Path, *,
                        config_dir: Path | None = None, progress: Progress = NO_PROGRESS) -> BakeReport:
    output_dir = refuse_existing(output_dir)
    files = _open_loras(loras)
    weights = ModelWeights(model, config_dir=config_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        if weights.path.is_dir():
            changed = _folder_to_folder(weights, files, tmp, progress)
        elif weights.family == "sdxl":
            raise UserError(tool_error("sdxl_to_diffusers", path=str(weights.path)))
        else:
            changed = _single_to_folder(weights, files, tmp, progress)
        if os.path.lexists(output_dir):
            raise OutputExists(tool_error("output_appeared", path=str(output_dir)))
        # mkdtemp made the folder 0700; the finished folder gets what any new folder gets under the umask
        os.chmod(tmp, 0o777 & ~current_umask())
        tmp.rename(output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return BakeReport(output_dir, changed, [str(p) for p, _ in loras])


def _folder_to_folder(weights: ModelWeights, files, out: Path, progress: Progress) -> int:
    """Copy a diffusers folder; the unet/ and text_encoder/ (and SDXL's text_encoder_2/) weights are rewritten
    with the deltas added."""
    missing = [n for n in _adapted(files) if not weights.has(n)]
    if missing:
        _other_family(files, missing, weights.path)
    by_key: Deltas = {}
    for f, w in files:
        for n in f.modules:
            by_key.setdefault(n, []).append((f, n, w, None))
    src = weights.path
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or (rel.parts[0] in weights.parts and _is_weights(path)):
            continue  # the component's weights (and other variants of them) are written below
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / rel)
    total = sum(len(f.keys) for part in weights.parts for f in weights.files[part])
    done = 0
    for part in weights.parts:
        shards = weights.files[part]
        names_out = _shard_names(part, shards)
        for f, name in zip(shards, names_out):
            (out / part).mkdir(parents=True, exist_ok=True)
            with StreamingSafetensorsWriter(out / part / name) as writer:
                for key in f.keys:
                    progress.step(done, total, key)
                    done += 1
                    tensor = f.tensor(key)
                    module = weights.name_of(part, key)
                    writer.add(key, _with_deltas(tensor, by_key[module]) if module in by_key else tensor)
                writer.finish(f.metadata or {"format": "pt"})
        if len(shards) > 1:
            weight_map = {key: name for f, name in zip(shards, names_out) for key in f.keys}
            index = {"metadata": {}, "weight_map": weight_map}
            (out / part / f"{WEIGHT_NAMES[part][0]}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    progress.step(total, total, "")
    return len(by_key)


def _single_to_folder(weights: ModelWeights, files, out: Path, progress: Progress) -> int:
    """A single file written as a diffusers folder, tensor by tensor, with the configs of `weights.config_dir`."""
    from diffusers import AutoencoderKL

    from loratrainer.tools.ldm_names import kohya_to_ldm, ldm_to_diffusers

    source = weights.single
    names = kohya_to_ldm(source.keys, weights.config_dir)
    by_key = _deltas_by_key(files, {n: (k, None) for n, k in names.items()}, weights.path)
    models = meta_models(weights.config_dir)
    with torch.device("meta"):
        models["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(weights.config_dir, subfolder="vae"))
    expected = {part: m.state_dict() for part, m in models.items()}
    placed: dict[str, dict[str, str]] = {part: {} for part in expected}  # part -> diffusers key -> checkpoint key
    for key, (part, diffusers_key) in ldm_to_diffusers(source.keys, weights.config_dir).items():
        if diffusers_key not in expected[part]:
            diffusers_key = diffusers_key.removeprefix("text_model.")  # a flattened CLIPTextModel
        if diffusers_key in expected[part]:
            placed[part][diffusers_key] = key
    for part, keys in expected.items():
        lacking = [k for k in keys if k not in placed[part]]
        if lacking:
            raise UserError(tool_error("checkpoint_lacks", path=str(weights.path), count=len(lacking), key=lacking[0]))
    for path in sorted(weights.config_dir.rglob("*")):
        rel = path.relative_to(weights.config_dir)
        if path.is_file() and path.suffix in (".json", ".txt") and not _is_weights(path):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out / rel)
    total, done = sum(len(v) for v in placed.values()), 0
    for part in ("unet", "vae", "text_encoder"):
        (out / part).mkdir(parents=True, exist_ok=True)
        name = f"{(WEIGHT_NAMES[part])[0]}.safetensors"
        with StreamingSafetensorsWriter(out / part / name) as writer:
            for diffusers_key, key in placed[part].items():
                progress.step(done, total, key)
                done += 1
                tensor = source.tensor(key)
                if key in by_key:
                    tensor = _with_deltas(tensor, by_key[key])
                writer.add(diffusers_key, tensor.reshape(expected[part][diffusers_key].shape))
            writer.finish({"format": "pt"})
    progress.step(total, total, "")
    return len(by_key)


def _adapted(files) -> set[str]:
    return {n for f, _ in files for n in f.modules}


def _other_family(files, missing: list[str], model: Path) -> None:
    for f, _ in files:
        lacking = [n for n in f.modules if n in missing]
        if lacking:
            raise UserError(tool_error("lora_other_family", lora=f.path.name, count=len(lacking), model=model.name,
                                       module=lacking[0]))


def _deltas_by_key(files, names: dict[str, tuple[str, tuple[int, int] | None]], model: Path) -> Deltas:
    """{checkpoint key: the LoRA modules to add to it} from {Kohya name: (checkpoint key, rows)}."""
    missing = [n for n in _adapted(files) if n not in names]
    if missing:
        _other_family(files, missing, model)
    by_key: Deltas = {}
    for f, weight in files:
        for n in f.modules:
            key, rows = names[n]
            by_key.setdefault(key, []).append((f, n, weight, rows))
    return by_key


def _is_weights(path: Path) -> bool:
    return path.name.endswith((".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json", ".ckpt", ".pt"))


def _shard_names(part: str, shards: list[TensorFile]) -> list[str]:
    """Output names: the canonical `<stem>.safetensors` for one file (a .bin or a variant becomes what diffusers
    loads without asking for a variant); the shards' own names with .safetensors for a sharded model."""
    if len(shards) == 1:
        return [f"{WEIGHT_NAMES[part][0]}.safetensors"]
    return [f.path.name.removesuffix(".bin").removesuffix(".safetensors") + ".safetensors" for f in shards]


def _open_loras(loras: list[tuple[Path, float]]) -> list[tuple[LoraFile, float]]:
    if not loras:
        raise UserError(tool_error("no_loras"))
    files = [(LoraFile(p), float(w)) for p, w in loras]
    for f, _ in files:
        refuse_lycoris(f, "merge-into")
    return files


def _with_deltas(weight: torch.Tensor, deltas: list[tuple[LoraFile, str, float, tuple[int, int] | None]]) -> torch.Tensor:
    # float32 and in place: the largest SD1.5 weight (10240 x 1280) then costs two float32 copies, not a chain of
    # float64 temporaries; diffusers' fuse_lora adds in float32 as well
    out = weight.to(torch.float32, copy=True)
    for f, name, w, rows in deltas:
        down, up, scale = f.factors(name)
        target = out if rows is None else out[rows[0]:rows[1]]  # a view: adding to it adds to the fused weight
        if up.shape[0] * math.prod(down.shape[1:]) != target.numel():
            expected = list(target.shape)
            raise UserError(tool_error("lora_shape", lora=f.path.name, module=name,
                                       shape=str(list(weight_shape(down, up))), expected=str(expected)))
        matrix = (up.reshape(up.shape[0], -1) * (w * scale)).float() @ down.reshape(down.shape[0], -1).float()
        target.add_(matrix.reshape(target.shape))
        del matrix
    return out.to(weight.dtype)
