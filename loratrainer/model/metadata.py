"""The metadata stored in a LoRA file: Kohya's ss_* keys, SAI ModelSpec keys and the sshs_* hashes.

A1111's and ComfyUI's LoRA browsers read these (tag frequency especially); names and value formats follow
Kohya's train_network.py (every value a string: str() of Python values, JSON for nested ones).

SDXL (ModelInfo.family "sdxl") as sd-scripts' sdxl_train_network.py writes it: ss_base_model_version
"sdxl_base_v1-0" (library/sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0), modelspec.architecture
"stable-diffusion-xl-v1-base/lora" and modelspec.implementation Stability AI's generative-models
(library/sai_model_spec.py: determine_architecture / determine_implementation for lora and sdxl), plus the keys
train_network.py writes that only SDXL training sets here (ss_zero_terminal_snr, ss_fp8_base); a separate text
encoder 2 rate makes ss_text_encoder_lr the list sd-scripts records for --text_encoder_lr A B.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch
from safetensors.torch import save as safetensors_bytes

from loratrainer.config import LYCORIS_TYPES, TrainingConfig
from loratrainer.model.lycoris import dora_network_args, network_args

MODELSPEC_VERSION = "1.0.1"
BASE_MODEL_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}  # ss_base_model_version
ARCHITECTURE = {"sd15": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}  # modelspec.architecture + "/lora"
IMPLEMENTATION = {"sd15": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}


@dataclass(frozen=True)
class DirInfo:
    n_repeats: int
    img_count: int


@dataclass
class DatasetInfo:
    """What the data layer knows about the dataset, in Kohya's shapes."""

    num_train_images: int  # images x repeats, as Kohya counts them
    dataset_dirs: dict[str, DirInfo]  # concept folder name ("10_name") -> repeats and image count
    tag_frequency: dict[str, dict[str, int]]  # concept folder name -> caption tag -> count
    bucket_info: dict | None = None  # {"buckets": {"0": {"resolution": [w, h], "count": n}}, "mean_img_ar_error": x}
    num_reg_images: int = 0
    reg_dataset_dirs: dict[str, DirInfo] = field(default_factory=dict)
    num_batches_per_epoch: int = 0
    num_validation_images: int = 0  # held out for validation loss (data/validation.py)


@dataclass
class TrainingProgress:
    epoch: int  # epochs completed when saving (Kohya's ss_epoch)
    step: int  # optimizer steps done (ss_steps)
    num_epochs: int
    max_train_steps: int  # the total the run computed
    seed: int  # the seed actually used (a config seed of 0 means "pick one")
    started_at: float  # unix time
    finished_at: float | None = None  # unix time of this save; None = now
    num_processes: int = 1
    mixed_precision: str | None = None  # what the trainer used (a CPU runs fp16 asked as "no"); None: the config's


@dataclass(frozen=True)
class ModelInfo:
    name: str  # ss_sd_model_name: the base model's file or folder name, or hub id
    hash: str = ""  # ss_sd_model_hash: A1111's legacy hash of the file (SD15Components.model_hash)
    new_hash: str = ""  # ss_new_sd_model_hash: sha256 of the whole file, when someone computed it
    vae_name: str = ""
    family: str = "sd15"  # the loaded components' family (components.family): "sd15" or "sdxl"


def build_metadata(
    config: TrainingConfig,
    progress: TrainingProgress,
    dataset: DatasetInfo,
    model: ModelInfo,
    *,
    optimizer_name: str | None = None,
    session_id: int | None = None,
) -> dict[str, str]:
    """All metadata of one saved file (the sshs_* hashes are added by saving.save_lora)."""
    return {**_kohya_keys(config, progress, dataset, model, optimizer_name, session_id),
            **_modelspec(config, progress, model.family)}


def _kohya_keys(config, progress, dataset, model, optimizer_name, session_id) -> dict[str, str]:
    net, opt, prec, ds, bk = config.network, config.optimizer, config.precision, config.dataset, config.buckets
    total_steps = progress.max_train_steps
    warmup = config.warmup_steps(total_steps)  # the schema's one formula (the Kohya GUI's percentage of all steps)
    optimizer = optimizer_name or opt.optimizer
    meta = {
        # one id per run (Kohya: "which group of epochs the model came from"), so derived from the start time
        "ss_session_id": session_id if session_id is not None else int(progress.started_at * 1000) % 2**31,
        "ss_training_started_at": progress.started_at,
        "ss_training_finished_at": progress.finished_at if progress.finished_at is not None else _now(),
        "ss_output_name": config.folders.output_name,
        "ss_learning_rate": opt.learning_rate,
        "ss_text_encoder_lr": config.effective_text_encoder_lr,
        "ss_unet_lr": config.effective_unet_lr,
        "ss_num_train_images": dataset.num_train_images,
        "ss_num_reg_images": dataset.num_reg_images,
        "ss_num_batches_per_epoch": dataset.num_batches_per_epoch,
        "ss_num_epochs": progress.num_epochs,
        "ss_epoch": progress.epoch,
        "ss_steps": progress.step,
        "ss_max_train_steps": total_steps,
        "ss_gradient_checkpointing": prec.gradient_checkpointing,
        "ss_gradient_accumulation_steps": config.training.gradient_accumulation_steps,
        "ss_lr_warmup_steps": warmup,
        "ss_lr_scheduler": opt.lr_scheduler,
        # DoRA exists only in LyCORIS (sd-scripts' networks/lora.py has none)
        "ss_network_module": "lycoris.kohya" if net.lora_type in LYCORIS_TYPES or net.dora_wd else "networks.lora",
        "ss_network_dim": net.network_dim,
        "ss_network_alpha": net.network_alpha,
        "ss_network_dropout": net.network_dropout,
        "ss_mixed_precision": progress.mixed_precision or prec.mixed_precision,
        "ss_full_fp16": prec.full_fp16,
        "ss_full_bf16": prec.full_bf16,
        "ss_v2": False,
        "ss_base_model_version": BASE_MODEL_VERSION[model.family],
        "ss_v_parameterization": config.model.v_parameterization,
        "ss_clip_skip": config.model.clip_skip,
        "ss_max_token_length": config.model.max_token_length,
        "ss_cache_latents": prec.cache_latents,
        "ss_seed": progress.seed,
        "ss_noise_offset": config.noise.noise_offset,
        "ss_multires_noise_iterations": config.noise.multires_noise_iterations,
        "ss_multires_noise_discount": config.noise.multires_noise_discount,
        "ss_min_snr_gamma": config.loss.min_snr_gamma,
        "ss_ip_noise_gamma": config.noise.ip_noise_gamma,
        "ss_loss_type": config.loss.loss_type,
        "ss_huber_c": config.loss.huber_c,
        "ss_training_comment": config.metadata.training_comment,
        "ss_optimizer": optimizer + (f"({opt.optimizer_args})" if opt.optimizer_args else ""),
        "ss_max_grad_norm": opt.max_grad_norm,
        "ss_caption_dropout_rate": ds.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": ds.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": ds.caption_tag_dropout_rate,
        "ss_prior_loss_weight": ds.prior_loss_weight,
        "ss_batch_size_per_device": config.training.train_batch_size,
        "ss_total_batch_size": config.training.train_batch_size * progress.num_processes * config.training.gradient_accumulation_steps,
        "ss_resolution": str(tuple(bk.resolution)),  # Kohya writes the tuple: "(512, 512)"
        "ss_color_aug": ds.color_aug,
        "ss_flip_aug": ds.flip_aug,
        "ss_random_crop": ds.random_crop,
        "ss_shuffle_caption": ds.shuffle_caption,
        "ss_keep_tokens": ds.keep_tokens,
        "ss_enable_bucket": bk.enable_bucket,
        "ss_bucket_no_upscale": bk.bucket_no_upscale,
        "ss_min_bucket_reso": bk.min_bucket_reso,
        "ss_max_bucket_reso": bk.max_bucket_reso,
        "ss_dataset_dirs": json.dumps({k: vars(v) for k, v in dataset.dataset_dirs.items()}),
        "ss_reg_dataset_dirs": json.dumps({k: vars(v) for k, v in dataset.reg_dataset_dirs.items()}),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency),
        "ss_bucket_info": json.dumps(dataset.bucket_info),
        "ss_sd_model_name": model.name,
    }
    if net.dora_wd:  # what sd-scripts records for --network_module lycoris.kohya with dora_wd (model.lycoris)
        meta["ss_network_args"] = json.dumps(dora_network_args(net))
    elif net.lora_type == "LoCon":  # Kohya passes conv settings as network_args, values as strings
        meta["ss_network_args"] = json.dumps({"conv_dim": str(net.conv_dim), "conv_alpha": str(net.conv_alpha)})
    elif net.lora_type in LYCORIS_TYPES:  # what sd-scripts records for --network_module lycoris.kohya
        meta["ss_network_args"] = json.dumps(network_args(net))
    if model.family == "sdxl":
        meta["ss_zero_terminal_snr"] = config.noise.zero_terminal_snr
        meta["ss_fp8_base"] = prec.fp8_base
        if opt.text_encoder_2_lr is not None:  # sd-scripts records --text_encoder_lr A B as the list
            meta["ss_text_encoder_lr"] = [config.effective_text_encoder_lr, opt.text_encoder_2_lr]
    if model.hash:
        meta["ss_sd_model_hash"] = model.hash
    if model.new_hash:
        meta["ss_new_sd_model_hash"] = model.new_hash
    if model.vae_name:
        meta["ss_vae_name"] = model.vae_name
    meta.update(_validation_keys(config.training, dataset))
    return {k: str(v) for k, v in meta.items()}


def _validation_keys(o, dataset: DatasetInfo) -> dict:
    """sd-scripts train_network.py's validation metadata; our 'not set' values (0, every epoch) are its None."""
    return {"ss_num_validation_images": dataset.num_validation_images, "ss_validation_seed": o.validation_seed or None,
            "ss_validation_split": o.validation_split, "ss_max_validation_steps": o.max_validation_steps or None,
            "ss_validate_every_n_epochs": o.validate_every_n_epochs if o.validate_every_n_epochs != 1 else None,
            "ss_validate_every_n_steps": o.validate_every_n_steps or None}


def _modelspec(config: TrainingConfig, progress: TrainingProgress, family: str = "sd15") -> dict[str, str]:
    """SAI ModelSpec (github.com/Stability-AI/ModelSpec) as Kohya writes it for an SD1 or SDXL LoRA."""
    md = config.metadata
    w, h = config.buckets.resolution
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": ARCHITECTURE[family] + "/lora",
        "modelspec.implementation": IMPLEMENTATION[family],
        "modelspec.title": md.metadata_title or config.folders.output_name,
        "modelspec.resolution": f"{w}x{h}",
        "modelspec.date": datetime.fromtimestamp(progress.started_at, timezone.utc).isoformat(timespec="seconds"),
        "modelspec.prediction_type": "v" if config.model.v_parameterization else "epsilon",
    }
    optional = {
        "modelspec.author": md.metadata_author,
        "modelspec.description": md.metadata_description,
        "modelspec.license": md.metadata_license,
        "modelspec.tags": md.metadata_tags,
        "modelspec.trigger_phrase": md.metadata_trigger_phrase,
    }
    spec.update({k: v for k, v in optional.items() if v})
    return spec


def with_safetensors_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """Add sshs_model_hash / sshs_legacy_hash as Kohya's train_util.precalculate_safetensors_hashes does.

    Both are taken over the file as it would be written with only the ss_* keys (user-editable keys must not
    change the hash): sshs_model_hash = sha256 of the tensor payload after the header (sd-webui-additional-networks'
    "addnet" hash, A1111 shows it), sshs_legacy_hash = first 8 hex of sha256 of the 64 KiB at offset 1 MiB.
    """
    data = safetensors_bytes(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_len = int.from_bytes(data[:8], "little")
    return {
        **metadata,
        "sshs_model_hash": hashlib.sha256(data[8 + header_len :]).hexdigest(),
        "sshs_legacy_hash": hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8],
    }


def _now() -> float:
    return datetime.now(timezone.utc).timestamp()
