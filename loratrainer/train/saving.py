"""Writing one LoRA file: the Kohya-format tensors in the save precision, checked finite, with metadata."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from loratrainer.train import model_api
from loratrainer.train.checkpoints import Progress

log = logging.getLogger("loratrainer.train")


class NonFiniteWeights(RuntimeError):
    pass


def make_saver(t, state: dict):
    started = time.time()

    def write(path: Path, p: Progress) -> None:
        tensors = model_api.lora_state(t.handle, t.config.precision.save_precision)
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            from loratrainer.train.loop import NonFiniteLoss

            raise NonFiniteLoss(p.step, p.epoch, float("nan")) from NonFiniteWeights(f"{len(bad)} tensors not finite, e.g. {bad[0]}")
        meta = model_api.metadata(**metadata_fields(t, p, started))
        model_api.save_file(path, tensors, meta)
        if p.step >= p.total_steps and t.config.saving.save_diffusers_format and path.stem == t.config.folders.output_name:
            export_diffusers(t, path.with_name(path.stem + "_diffusers"))

    return write


def metadata_fields(t, p: Progress, started: float) -> dict:
    """What the model layer's build_metadata receives (names agreed with loratrainer.model.metadata)."""
    return {
        "config": t.config,
        "report": t.report,
        "model_name": t.components.model_name,
        "model_hash": t.components.model_hash,
        "seed": t.seed,
        "epoch": p.epoch,
        "step": p.step,
        "training_started_at": started,
        "output_name": t.config.folders.output_name,
    }


def export_diffusers(t, folder: Path) -> None:
    """The final LoRA also as diffusers' pytorch_lora_weights.safetensors (StableDiffusionPipeline.load_lora_weights)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unwrap = t.accelerator.unwrap_model
    layers = {}
    if t.config.trains_unet:
        layers["unet_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(unwrap(t.unet)))
    if t.config.trains_text_encoder:
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(unwrap(t.text_encoder)))
    if folder.exists():
        raise FileExistsError(f"{folder} exists and will not be overwritten")
    StableDiffusionPipeline.save_lora_weights(str(folder), safe_serialization=True, **layers)
    log.info("saved diffusers-format LoRA to %s", folder)
