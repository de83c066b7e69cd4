"""The trainer's view of loratrainer.model: load, add LoRA, Kohya-format tensors, metadata, save."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import torch

from loratrainer.config import TrainingConfig
from loratrainer.data.report import DatasetReport
from loratrainer.model.kohya_format import SAVE_DTYPES, load_network_weights, lora_state_dict
from loratrainer.model.loading import load_sd15
from loratrainer.model.lora import inject_lora
from loratrainer.model.metadata import DatasetInfo, DirInfo, ModelInfo, TrainingProgress, build_metadata
from loratrainer.model.saving import save_diffusers_lora, save_lora

__all__ = ["load_models", "add_lora", "load_network_weights", "lora_state", "save_lora", "save_diffusers_lora", "file_metadata"]

def load_models(config: TrainingConfig, dtype: torch.dtype):
    # Single files are always built with the shipped SD1.5 configs (tests/test_model_loading_full_size.py).
    return load_sd15(config.model, dtype=dtype)


def add_lora(components, config: TrainingConfig):
    p = config.precision
    lora_dtype = torch.float16 if p.full_fp16 else torch.bfloat16 if p.full_bf16 else torch.float32
    return inject_lora(components, config.network, train_unet=config.trains_unet,
                       train_text_encoder=config.trains_text_encoder, lora_dtype=lora_dtype)


def lora_state(handle, save_precision: str) -> dict[str, torch.Tensor]:
    return lora_state_dict(handle, SAVE_DTYPES[save_precision])


def dataset_info(report: DatasetReport) -> DatasetInfo:
    """Kohya's ss_dataset_dirs / ss_tag_frequency / ss_bucket_info from the dataset check."""
    dirs: dict[str, dict[str, DirInfo]] = {"train": {}, "reg": {}}
    tags: dict[str, Counter] = {}
    for s in report.samples:
        name = s.concept_dir.name
        group = dirs["reg" if s.is_reg else "train"]
        old = group.get(name, DirInfo(s.repeats, 0))
        group[name] = DirInfo(s.repeats, old.img_count + 1)
        if not s.is_reg:
            tags.setdefault(name, Counter()).update(t.strip() for t in s.caption.split(",") if t.strip())
    buckets = {str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(report.buckets.items()))}
    return DatasetInfo(
        num_train_images=report.steps.train_samples_per_epoch,
        dataset_dirs=dirs["train"],
        tag_frequency={k: dict(v) for k, v in tags.items()},
        bucket_info={"buckets": buckets, "mean_img_ar_error": 0.0},
        num_reg_images=report.steps.reg_samples_per_epoch,
        reg_dataset_dirs=dirs["reg"],
        num_batches_per_epoch=report.steps.batches_per_epoch,
    )


def file_metadata(config: TrainingConfig, info: DatasetInfo, components, *, epoch: int, step: int, total_steps: int,
                  epochs: int, seed: int, started_at: float, num_processes: int) -> dict[str, str]:
    progress = TrainingProgress(epoch=epoch, step=step, num_epochs=epochs, max_train_steps=total_steps, seed=seed,
                                started_at=started_at, finished_at=time.time(), num_processes=num_processes)
    model = ModelInfo(name=components.model_name, hash=components.model_hash, vae_name=Path(config.model.vae).name if config.model.vae else "")
    return build_metadata(config, progress, info, model)
