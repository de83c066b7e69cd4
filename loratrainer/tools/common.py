"""What merge, resize and extract share: output precision, the LoRA writer loop and the output's metadata."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from loratrainer.tools.callbacks import Progress
from loratrainer.tools.writer import StreamingSafetensorsWriter

# model/kohya_format's key suffixes and save_precision names and model/metadata's modelspec version, repeated here
# because those modules import peft, diffusers and the settings schema: merge, resize and inspect start in a
# fraction of the time without them (tests/test_lora_tools.py checks the values are the same)
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODELSPEC_VERSION = "1.0.1"

PRECISIONS = ("auto", "float", "fp16", "bf16")


def save_dtype(precision: str, fallback: torch.dtype) -> torch.dtype:
    """`auto` keeps the input's precision (an fp16 LoRA stays fp16); otherwise Kohya's save_precision names."""
    if precision == "auto":
        return fallback if fallback in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
    return SAVE_DTYPES[precision]


def write_lora(path: str | Path, modules: Iterator[tuple[str, torch.Tensor, torch.Tensor, float]], total: int,
               metadata: dict[str, str], dtype: torch.dtype, progress: Progress) -> Path:
    """Write (name, down, up, alpha) modules one at a time as Kohya keys; nothing is written if one fails."""
    return write_lora_then_meta(path, modules, total, lambda: metadata, dtype, progress)


def write_lora_then_meta(path: str | Path, modules: Iterator[tuple[str, torch.Tensor, torch.Tensor, float]],
                         total: int, metadata: Callable[[], dict[str, str]], dtype: torch.dtype,
                         progress: Progress, *, count_steps: bool = True) -> Path:
    """write_lora with the metadata asked for after the last module (ranks chosen on the way go into it).
    `count_steps=False`: the module iterator reports progress itself (extract, which skips modules)."""
    with StreamingSafetensorsWriter(path) as writer:
        if count_steps:
            progress.step(0, total, "")
        for i, (name, down, up, alpha) in enumerate(modules, 1):
            writer.add(name + DOWN, down.to(dtype))
            writer.add(name + UP, up.to(dtype))
            writer.add(name + ALPHA, torch.tensor(float(alpha), dtype=dtype))
            if count_steps:
                progress.step(i, total, name)
        return writer.finish(metadata(), kohya_hashes=True)


def lora_metadata(base: dict[str, str], *, title: str, dims: Iterable[int], alphas: Iterable[float],
                  conv_dims: Iterable[int] = (), conv_alphas: Iterable[float] = (), comment: str = "",
                  extra: dict[str, str] | None = None, dynamic: bool = False) -> dict[str, str]:
    """ss_*/modelspec.* for a LoRA made by a tool. `base` is kept (a resized file keeps its training record)
    except its sshs_* hashes, which belong to the old tensors; ranks and alphas say what the file now holds."""
    meta = {k: v for k, v in base.items() if not k.startswith("sshs_")}
    dims, alphas, conv_dims = sorted(set(dims)), sorted(set(alphas)), sorted(set(conv_dims))
    conv_alphas = sorted(set(float(a) for a in conv_alphas))
    # "Dynamic": Kohya's word for ranks that differ per module (`dynamic`: chosen per module, as resize_lora.py
    # says for any dynamic resize and merge_lora.py for modules of differing ranks, convolutions included)
    meta.update({
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dims[0]) if len(dims) == 1 and not dynamic else "Dynamic",
        "ss_network_alpha": _number(alphas[0]) if len(alphas) == 1 and not dynamic else "Dynamic",
        "ss_base_model_version": meta.get("ss_base_model_version", "sd_v1"),
        "ss_v2": meta.get("ss_v2", "False"),
    })
    if conv_dims:
        # as sd-scripts extract_lora_from_models.py writes it: conv_dim and conv_alpha (alpha = rank for a tool's
        # output), alpha as Python writes a float ("8.0")
        one = len(conv_dims) == 1
        meta["ss_network_args"] = json.dumps({"conv_dim": str(conv_dims[0]) if one else "Dynamic",
                                              "conv_alpha": _number(conv_alphas[0] if conv_alphas else conv_dims[0])
                                              if one and len(set(conv_alphas)) <= 1 else "Dynamic"})
    if comment:
        meta["ss_training_comment"] = comment
    meta.setdefault("modelspec.sai_model_spec", MODELSPEC_VERSION)
    meta.setdefault("modelspec.architecture", "stable-diffusion-v1/lora")
    meta.setdefault("modelspec.implementation", "diffusers")
    meta["modelspec.title"] = title
    meta["modelspec.date"] = datetime.fromtimestamp(time.time(), timezone.utc).isoformat(timespec="seconds")
    meta.update(extra or {})
    return meta


def _number(x: float) -> str:
    """An alpha as sd-scripts writes it: str() of a Python float ("2.0", "0.5"), not "2"."""
    return str(float(x))
