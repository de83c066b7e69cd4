"""The trainer's one seam between model families: what differs between SD1.5 and SDXL in training.

The loaded components choose the family (`family_for(components)`: SDXL's have a second text encoder); the
loop, the entry point, saving and the launcher never ask which one it is. A family says:

- which text encoders it has (`text_encoders`, attribute names on the components) and the learning rate of each
  (`text_encoder_lrs`: 0 = that encoder is not trained, as sd-scripts' param groups skip a rate of 0);
- how captions become the UNet's conditioning (`encode`: what the text cache keeps per caption; `condition`: the
  hidden states and any extra UNet arguments for a batch);
- whether the dataset computes size conditioning (`size_conditioning`) and the UNet takes it;
- its native resolution and whether clip skip applies (`notes`: what the log says about a run's settings);
- how a sample image is rendered (`pipeline`, `prompt_arguments`; `pipeline_of` also builds compare's weight grid).

SD1.5: one CLIP text encoder, clip skip, no extras (train/text.py). SDXL: sd-scripts' sdxl_train_network.py
(train/sdxl_text.py, train/size_conditioning.py). The next family (Flux) is one more class here.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from loratrainer.config import TrainingConfig
from loratrainer.errors import UserError
from loratrainer.messages import Label, Msg
from loratrainer.run import notes as _notes  # noqa: F401  the codes of the warnings below (the page must know them)
from loratrainer.run import outcomes as _outcomes  # noqa: F401  train.fp8_*, the errors below (the page must know them)
from loratrainer.train.sdxl_text import encode_sdxl
from loratrainer.train.text import encode, final_layer_norm, tokenize


class Family:
    name = ""
    text_encoders: tuple[str, ...] = ("text_encoder",)
    size_conditioning = False
    cache_keys: tuple[str, ...] = ()  # the text cache's arrays per caption (disk: Kohya's npz keys)
    # the side the base model was trained at: the log notes a run far below it (None: no note; SD1.5 LoRAs are
    # trained at 512 and below on purpose)
    native_resolution: int | None = None
    uses_clip_skip = True

    def text_encoder_lrs(self, config: TrainingConfig) -> dict[str, float]:
        raise NotImplementedError

    def trains_text(self, config: TrainingConfig) -> bool:
        return any(lr > 0 for lr in self.text_encoder_lrs(config).values())

    def encode(self, t, captions: list[str]):
        """What a caption's conditioning is computed from (cached per caption when the encoders are frozen)."""
        raise NotImplementedError

    def condition(self, t, batch: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        """(encoder hidden states, extra keyword arguments of the UNet call) for a batch."""
        raise NotImplementedError

    def pipeline(self, t, unet, text_encoders: dict[str, torch.nn.Module], scheduler):
        return self.pipeline_of(t.components, unet, text_encoders, scheduler)

    def pipeline_of(self, components, unet, text_encoders: dict[str, torch.nn.Module], scheduler):
        """The family's diffusers pipeline on these models (training's samples and compare's weight grid)."""
        raise NotImplementedError

    def prompt_arguments(self, t, text_encoders: dict[str, torch.nn.Module], prompt: str, negative: str) -> dict[str, Any]:
        raise NotImplementedError


def notes(family: Family, config: TrainingConfig) -> list[Msg]:
    """What the trainer's log (and the page, run/notes.py) says about settings that do not fit the family (training
    goes on, as sd-scripts')."""
    out = []
    if not family.uses_clip_skip and config.model.clip_skip > 1:
        out.append(Msg.of("train.clip_skip_not_used", clip_skip=Label("model.clip_skip"), value=config.model.clip_skip, family=family.name))
    side = max(config.buckets.resolution)
    if family.native_resolution and side < family.native_resolution * 3 // 4:
        out.append(Msg.of("train.low_resolution", family=family.name, side=side, native=family.native_resolution))
    return out


def text_outputs(t, captions: list[str]):
    """The family's encoding of `captions`: with gradients when a text encoder trains, else from the text cache."""
    family = t.family

    def run(texts: list[str]):
        return family.encode(t, texts)

    if family.trains_text(t.config):
        return run(captions)
    with torch.no_grad():
        return t.text_cache.get(captions, run) if t.text_cache is not None else run(captions)


def sd15_hidden_states(t, captions: list[str]) -> torch.Tensor:
    """SD1.5's hidden states (clip skip, 75-token chunks: train/text.py)."""
    m = t.config.model
    te = t.text_encoder
    norm = final_layer_norm(t.accelerator.unwrap_model(te))
    return encode(te, norm, tokenize(t.components.tokenizer, captions, m.max_token_length), m.clip_skip, t.accelerator.device)


def text_states(t, captions: list[str]) -> torch.Tensor:
    """SD1.5's hidden states for captions, from the text cache when the text encoder is frozen."""
    if t.config.trains_text_encoder:
        return sd15_hidden_states(t, captions)
    with torch.no_grad():
        return t.text_cache.get(captions, lambda texts: sd15_hidden_states(t, texts)) if t.text_cache is not None else sd15_hidden_states(t, captions)


class SD15(Family):
    name = "sd15"
    cache_keys = ("hidden_state",)

    def text_encoder_lrs(self, config: TrainingConfig) -> dict[str, float]:
        return {"text_encoder": config.effective_text_encoder_lr}

    def encode(self, t, captions: list[str]) -> torch.Tensor:
        return sd15_hidden_states(t, captions)

    def condition(self, t, batch: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        return text_states(t, batch["captions"]), {}

    def pipeline_of(self, c, unet, text_encoders, scheduler):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=c.vae, text_encoder=text_encoders["text_encoder"], tokenizer=c.tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def prompt_arguments(self, t, text_encoders, prompt: str, negative: str) -> dict[str, Any]:
        """The prompt as training sees captions: the same clip skip and 75-token chunks (max_token_length)."""
        m = t.config.model
        te = text_encoders["text_encoder"]
        embeds = [encode(te, final_layer_norm(te), tokenize(t.components.tokenizer, [text], m.max_token_length), m.clip_skip,
                         t.accelerator.device) for text in (prompt, negative)]
        return {"prompt_embeds": embeds[0], "negative_prompt_embeds": embeds[1]}


class SDXL(Family):
    name = "sdxl"
    text_encoders = ("text_encoder", "text_encoder_2")
    size_conditioning = True
    cache_keys = ("hidden_state1", "hidden_state2", "pool2")  # sd-scripts' *_te_outputs.npz
    native_resolution = 1024
    uses_clip_skip = False  # sd-scripts' verify_sdxl_training_args: "clip_skip will be unexpected"

    def text_encoder_lrs(self, config: TrainingConfig) -> dict[str, float]:
        te = config.effective_text_encoder_lr
        te2 = config.optimizer.text_encoder_2_lr
        return {"text_encoder": te, "text_encoder_2": te if te2 is None else te2}

    def encode(self, t, captions: list[str]):
        c = t.components
        return encode_sdxl(t.text_encoder, t.text_encoder_2, c.tokenizer, c.tokenizer_2, captions, t.config.model.max_token_length,
                           t.accelerator.device, unwrapped_text_encoder_2=t.accelerator.unwrap_model(t.text_encoder_2))

    def condition(self, t, batch: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        hidden1, hidden2, pooled = text_outputs(t, batch["captions"])
        return torch.cat([hidden1, hidden2], dim=2), added_cond_kwargs(pooled, batch["time_ids"], t.accelerator.device, t.weight_dtype)

    def pipeline_of(self, c, unet, text_encoders, scheduler):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=c.vae, text_encoder=text_encoders["text_encoder"], text_encoder_2=text_encoders["text_encoder_2"],
            tokenizer=c.tokenizer, tokenizer_2=c.tokenizer_2, unet=unet, scheduler=scheduler,
        )

    def prompt_arguments(self, t, text_encoders, prompt: str, negative: str) -> dict[str, Any]:
        """Prompts encoded as training encodes captions (sd-scripts' sdxl_train_util.sample_images does the same)."""
        c, m = t.components, t.config.model
        out = [encode_sdxl(text_encoders["text_encoder"], text_encoders["text_encoder_2"], c.tokenizer, c.tokenizer_2, [text],
                           m.max_token_length, t.accelerator.device) for text in (prompt, negative)]
        return {"prompt_embeds": torch.cat(out[0][:2], dim=2), "pooled_prompt_embeds": out[0][2],
                "negative_prompt_embeds": torch.cat(out[1][:2], dim=2), "negative_pooled_prompt_embeds": out[1][2]}


def added_cond_kwargs(pooled: torch.Tensor, time_ids: torch.Tensor, device, dtype) -> dict[str, Any]:
    """SDXL's UNet extras: sd-scripts' call_unet concatenates pool2 with get_size_embeddings(time ids) into the
    'vector' input; diffusers' UNet builds the same vector from these two (addition_embed_type 'text_time')."""
    return {"added_cond_kwargs": {"text_embeds": pooled.to(device, dtype), "time_ids": time_ids.to(device, dtype)}}


FAMILIES: dict[str, Family] = {"sd15": SD15(), "sdxl": SDXL()}


def family_for(components) -> Family:
    """The family of loaded components (their `family`; anything without one, e.g. a test's stand-in, by whether it
    carries a second text encoder)."""
    name = getattr(components, "family", None) or ("sdxl" if getattr(components, "text_encoder_2", None) is not None else "sd15")
    return FAMILIES[name]


# -- which family a model setting names, before loading it --------------------------------------------------------


def detect_model_family(source: str) -> str:
    """'sdxl' or 'sd15' from the model's own files (never its name), cheaply, for the entry point before anything
    loads (model.components.load_components decides what is loaded): a diffusers folder's components or a
    .safetensors header (model.families). Other sources: 'sd15'."""
    path = Path(os.path.expanduser(source.strip()))
    if path.is_dir():
        from loratrainer.model.components import folder_family

        return "sdxl" if folder_family(path) == "sdxl" else "sd15"
    if path.is_file() and path.suffix.lower() == ".safetensors":
        from loratrainer.model.families import detect_family

        try:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error, MemoryError):
            return "sd15"  # the loader names what is wrong with the file
        shapes = {k: _Shape(v.get("shape", [])) for k, v in header.items() if isinstance(v, dict)}
        return "sdxl" if detect_family(shapes) == "sdxl" else "sd15"
    return "sd15"


class _Shape:
    def __init__(self, shape: list[int]):
        self.shape, self.ndim = tuple(shape), len(shape)


# -- precision options that act on the loaded models --------------------------------------------------------------


def store_unet_in_fp8(unet: torch.nn.Module, mixed_precision: str, device: torch.device) -> None:
    """sd-scripts' fp8_base (train_network.py): the frozen UNet weights stored as float8_e4m3fn, computed in the
    mixed precision by autocast; the LoRA weights (requires_grad) stay as they are. sd-scripts asserts mixed
    precision fp16/bf16; we also refuse a CPU: its autocast leaves group_norm alone, which then fails on fp8
    weights ("mixed dtype (CPU)", seen with the tiny SDXL and bf16), while CUDA's autocast runs it in fp32."""
    if not hasattr(torch, "float8_e4m3fn"):
        raise UserError(Msg.of("train.fp8_unsupported", fp8=Label("precision.fp8_base"), version=torch.__version__))
    if mixed_precision not in ("fp16", "bf16") or device.type != "cuda":
        raise UserError(Msg.of("train.fp8_needs_gpu", fp8=Label("precision.fp8_base"), mixed=Label("precision.mixed_precision")))
    for module in unet.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(torch.float8_e4m3fn)
