"""The trainer's view of loratrainer.model: load, add LoRA, Kohya-format state dict, save with metadata.

Everything goes through the model layer's public functions. While a model module does not exist yet,
minimal private stand-ins here (diffusers folders only, peft LoRA on the Kohya target modules, Kohya key
names) let the trainer run; they are used only when that module is missing.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loratrainer.config import NetworkSettings, TrainingConfig

log = logging.getLogger("loratrainer.train")

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Test hook: the diffusers-layout config folder for single-file checkpoints that are not real SD1.5 (tiny models).
CONFIG_DIR_ENV = "LORATRAINER_SD15_CONFIG_DIR"


def _layer(module: str):
    """loratrainer.model.<module>, or None while it does not exist yet."""
    try:
        return importlib.import_module(f"loratrainer.model.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"loratrainer.model.{module}":
            raise
        return None


def load_models(config: TrainingConfig, dtype: torch.dtype):
    loading = _layer("loading")
    if loading is None:
        return _Fallback.load(config, dtype)
    config_dir = os.environ.get(CONFIG_DIR_ENV) or None
    return loading.load_sd15(config.model, dtype=dtype, config_dir=config_dir)


def add_lora(components, config: TrainingConfig):
    lora = _layer("lora")
    if lora is None:
        return _Fallback.inject(components, config.network, config.trains_unet, config.trains_text_encoder)
    return lora.inject_lora(components, config.network, train_unet=config.trains_unet, train_text_encoder=config.trains_text_encoder)


def load_network_weights(handle, path: str) -> None:
    kohya = _layer("kohya_format")
    if kohya is None:
        raise NotImplementedError("network_weights needs loratrainer.model.kohya_format")
    kohya.load_network_weights(handle, path)


def lora_state(handle, save_precision: str) -> dict[str, torch.Tensor]:
    kohya = _layer("kohya_format")
    dtype = SAVE_DTYPES[save_precision]
    return _Fallback.state_dict(handle, dtype) if kohya is None else kohya.lora_state_dict(handle, dtype)


def save_file(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    saving = _layer("saving")
    if saving is not None:
        saving.save_lora(path, state, metadata, overwrite=False)
        return
    from safetensors.torch import save_file as st_save

    from loratrainer.files import atomic_write_with

    atomic_write_with(path, lambda tmp: st_save({k: v.contiguous() for k, v in state.items()}, tmp, metadata), overwrite=False)


def metadata(**kwargs: Any) -> dict[str, str]:
    meta = _layer("metadata")
    if meta is None:
        return {"ss_output_name": str(kwargs.get("output_name", "")), "ss_steps": str(kwargs.get("step", 0))}
    return meta.build_metadata(**kwargs)


# -- transitional stand-ins --------------------------------------------------------------------------------------

UNET_TARGETS = ["proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@dataclass
class _Components:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    model_name: str
    model_hash: str


@dataclass
class _Handle:  # the fields of loratrainer.model.lora.LoraHandle that the stand-ins use
    unet: Any
    text_encoder: Any
    train_unet: bool
    train_text_encoder: bool
    network: NetworkSettings

    def unet_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if "lora_" in n] if self.train_unet else []

    def text_encoder_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.text_encoder.named_parameters() if "lora_" in n] if self.train_text_encoder else []


class _Fallback:
    @staticmethod
    def load(config: TrainingConfig, dtype: torch.dtype) -> _Components:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        log.warning("loratrainer.model is not available: using the trainer's minimal diffusers-folder loader")
        root = config.model.pretrained_model_name_or_path
        return _Components(
            tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
            text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", torch_dtype=dtype),
            vae=AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype),
            unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype),
            noise_scheduler=DDPMScheduler.from_pretrained(root, subfolder="scheduler"),
            model_name=Path(root).name,
            model_hash="",
        )

    @staticmethod
    def inject(c: _Components, network: NetworkSettings, train_unet: bool, train_te: bool) -> _Handle:
        from peft import LoraConfig, inject_adapter_in_model

        for module in (c.unet, c.text_encoder, c.vae):
            module.requires_grad_(False)
        if train_unet:
            c.unet.add_adapter(LoraConfig(r=network.network_dim, lora_alpha=network.network_alpha, init_lora_weights="gaussian", target_modules=UNET_TARGETS, lora_dropout=network.network_dropout))
        if train_te:
            inject_adapter_in_model(LoraConfig(r=network.network_dim, lora_alpha=network.network_alpha, target_modules=TE_TARGETS, lora_dropout=network.network_dropout), c.text_encoder)
        return _Handle(c.unet, c.text_encoder, train_unet, train_te, network)

    @staticmethod
    def state_dict(h: _Handle, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for prefix, model, on in (("lora_unet_", h.unet, h.train_unet), ("lora_te_", h.text_encoder, h.train_text_encoder)):
            if not on:
                continue
            for name, tensor in model.state_dict().items():
                m = re.match(r"(.*)\.lora_([AB])\.default\.weight$", name)
                if not m:
                    continue
                module = m.group(1).replace("text_model.", "")
                key = prefix + (("text_model_" if prefix == "lora_te_" else "") + module).replace(".", "_")
                out[f"{key}.lora_{'down' if m.group(2) == 'A' else 'up'}.weight"] = tensor.detach().to("cpu", dtype)
                out[f"{key}.alpha"] = torch.tensor(float(h.network.network_alpha), dtype=dtype)
        return out


