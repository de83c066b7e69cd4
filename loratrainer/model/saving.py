"""Writing a LoRA file: Kohya's .safetensors (atomically, never half a file) and optionally diffusers' format."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from loratrainer.files import atomic_write_with
from loratrainer.messages import Msg
from loratrainer.model.errors import NonFiniteLoraError, OutputExists
from loratrainer.model.metadata import with_safetensors_hashes


def save_lora(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str], *,
              overwrite: bool = False) -> Path:
    """Write `state_dict` (Kohya keys) with `metadata` (plus sshs_* hashes) to `path` via temp file + fsync + rename.

    Refuses NaN/inf tensors (NonFiniteLoraError names the module) and an existing file unless `overwrite`.
    """
    path = Path(path)
    check_finite(state_dict)
    if not overwrite and path.exists():
        raise OutputExists(Msg.of("model.output_exists", path=str(path)))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = with_safetensors_hashes(tensors, {k: str(v) for k, v in metadata.items()})
    try:
        return atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=overwrite)
    except FileExistsError as exc:  # appeared between the check and the rename
        raise OutputExists(Msg.of("model.output_appeared", path=str(path))) from exc


def check_finite(state_dict: dict[str, torch.Tensor]) -> None:
    bad = sorted({_module_name(key) for key, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()})
    if bad:
        more = Msg.of("model.and_more", count=len(bad) - 1) if len(bad) > 1 else ""
        raise NonFiniteLoraError(Msg.of("model.lora_non_finite", module=bad[0], more=more))


def _module_name(key: str) -> str:
    # Kohya keys (lora_unet_x.lora_down.weight, lora_unet_x.hada_w1_a, lora_unet_x.alpha) -> lora_unet_x;
    # peft keys (down_blocks.0...to_q.lora_A.weight) -> the module path
    if key.startswith(("lora_unet_", "lora_te")):  # lora_te_ (SD1.5), lora_te1_/lora_te2_ (SDXL)
        return key.split(".", 1)[0]
    return key.rsplit(".lora_", 1)[0]


def save_diffusers_lora(folder: str | Path, handle, *, save_dtype: torch.dtype = torch.float32) -> Path:
    """The same adapters in diffusers/peft format (folder/pytorch_lora_weights.safetensors, with the LoRA config
    as adapter metadata so ranks and alphas survive), for pipe.load_lora_weights(folder); SDXL handles are saved
    with StableDiffusionXLPipeline (text_encoder_2_lora_layers too)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kwargs = {}
    for part in handle.parts():
        state = _peft_state(handle, part)
        check_finite(state)
        kwargs[f"{part}_lora_layers"] = {k: v.to(save_dtype) for k, v in state.items()}
        kwargs[f"{part}_lora_adapter_metadata"] = handle.configs[part].to_dict()
    folder = Path(folder)
    pipeline = StableDiffusionXLPipeline if handle.family == "sdxl" else StableDiffusionPipeline
    pipeline.save_lora_weights(folder, safe_serialization=True, **kwargs)
    return folder


def _peft_state(handle, part) -> dict[str, torch.Tensor]:
    # peft-style keys (<module>.lora_A.weight) from our module list; text-encoder keys keep the text_model.
    # level that diffusers' loader expects
    from loratrainer.model.lora import ADAPTER

    model = handle.model(part)
    out = {}
    for info in handle.modules.values():
        if info.part != part:
            continue
        module = model.get_submodule(info.path)
        path = info.path
        if part in ("text_encoder", "text_encoder_2") and not path.startswith("text_model."):
            path = "text_model." + path
        out[f"{path}.lora_A.weight"] = module.lora_A[ADAPTER].weight.detach().cpu()
        out[f"{path}.lora_B.weight"] = module.lora_B[ADAPTER].weight.detach().cpu()
    return out
