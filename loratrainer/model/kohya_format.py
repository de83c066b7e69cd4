"""Kohya's LoRA tensor layout (docs/kohya-compat.md section 4): our peft adapters <-> lora_down/lora_up/alpha keys.

Per adapted module `<name>` (lora_unet_... / lora_te_...): `<name>.lora_down.weight` = peft's lora_A,
`<name>.lora_up.weight` = peft's lora_B, `<name>.alpha` = a scalar tensor. peft's conv LoRA already has Kohya's
shapes (down [r, in, k, k], up [out, r, 1, 1]), so the tensors are copied as they are.

LoHa / LoKr modules are saved in LyCORIS's layout instead (model.lycoris): `<name>.hada_w1_a` ... or
`<name>.lokr_w1` ..., plus the same `<name>.alpha`; peft's parameters already have LyCORIS's names and shapes.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from loratrainer.config import LYCORIS_TYPES
from loratrainer.model import lycoris
from loratrainer.model.checkpoint import read_checkpoint
from loratrainer.messages import Msg
from loratrainer.model.errors import NetworkWeightsMismatch
from loratrainer.model.lora import ADAPTER, LoraHandle, LoraModule

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
DORA = ".dora_scale"  # DoRA's magnitude, as LyCORIS names it (lycoris/modules/locon.py custom_state_dict)


def lora_state_dict(handle: LoraHandle, save_dtype: torch.dtype | str = torch.float16) -> dict[str, torch.Tensor]:
    """The adapters as Kohya-named CPU tensors in `save_dtype` (a dtype or save_precision: float/fp16/bf16)."""
    dtype = SAVE_DTYPES[save_dtype] if isinstance(save_dtype, str) else save_dtype
    out: dict[str, torch.Tensor] = {}
    lora_type = handle.network.lora_type
    for name, info in handle.modules.items():
        if lora_type in LYCORIS_TYPES:
            layer = handle.model(info.part).get_submodule(info.path)
            for key, tensor in lycoris.module_tensors(layer, lora_type).items():
                out[f"{name}.{key}"] = _to_cpu(tensor, dtype)
            alpha = torch.tensor(float(info.alpha), dtype=dtype)
            if not torch.isfinite(alpha):
                # fp16 tops out at 65504: a full-matrix LoKr's alpha = rank (the presets' 100000) stays float32 (the
                # loaders read it with .item() and ignore it for full factors; sd-scripts would write inf)
                alpha = torch.tensor(float(info.alpha))
            out[name + ALPHA] = alpha
            continue
        down, up = _lora_layers(handle, info)
        out[name + DOWN] = _to_cpu(down.weight, dtype)
        out[name + UP] = _to_cpu(up.weight, dtype)
        out[name + ALPHA] = torch.tensor(float(info.alpha), dtype=dtype)
        if handle.network.dora_wd:
            out[name + DORA] = _to_cpu(dora_scale(handle, info), dtype)
    return out


def _magnitude(handle: LoraHandle, info: LoraModule) -> tuple[nn.Parameter, torch.Size]:
    """peft's DoRA magnitude of a module and the base weight's shape."""
    module = handle.model(info.part).get_submodule(info.path)
    return module.lora_magnitude_vector[ADAPTER].weight, module.get_base_layer().weight.shape


def dora_scale(handle: LoraHandle, info: LoraModule) -> torch.Tensor:
    """peft's magnitude ([out] for a Linear, [1, out, 1, 1] for a Conv2d: one per output channel) in LyCORIS's
    wd_on_output layout, [out, 1] / [out, 1, 1, 1] (lycoris/modules/locon.py: norm of org_weight.reshape(out, -1),
    reshaped to (out, *[1] * (dim - 1))); the same numbers, only the shape differs."""
    magnitude, shape = _magnitude(handle, info)
    return magnitude.reshape(shape[0], *[1] * (len(shape) - 1))


def load_network_weights(handle: LoraHandle, path: str | Path) -> list[str]:
    """Copy a Kohya-format LoRA file into the injected adapters (continue training it).

    Every module in the file must be one we adapt, with the same rank, alpha and shapes; otherwise nothing is
    loaded and NetworkWeightsMismatch says what differs. Returns the adapted modules the file does not cover
    (they keep their fresh initialisation, e.g. LoCon's convolutions when the file is a Standard LoRA).
    """
    path = Path(path)
    state = read_checkpoint(path, what="LoRA (network_weights)")
    kind = lycoris.file_type(state)
    if kind or handle.network.lora_type in LYCORIS_TYPES:
        return _load_lycoris(handle, path, state, kind)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for suffix in (DOWN, UP, ALPHA, DORA):
            if key.endswith(suffix):
                by_module.setdefault(key[: -len(suffix)], {})[suffix] = value
                break
        else:
            raise NetworkWeightsMismatch(Msg.of("weights.not_kohya", path=str(path), key=key))
    has_dora = any(DORA in tensors for tensors in by_module.values())
    if has_dora != handle.network.dora_wd:
        raise NetworkWeightsMismatch(Msg.of("weights.dora_file" if has_dora else "weights.not_dora_file", path=str(path)))
    pending = []
    magnitudes = []
    for name, tensors in by_module.items():
        info = handle.modules.get(name)
        if info is None:
            raise NetworkWeightsMismatch(Msg.of("weights.unknown_module", path=str(path), why=_why_unknown(handle, name)))
        if DOWN not in tensors or UP not in tensors:
            raise NetworkWeightsMismatch(Msg.of("weights.lacks_factor", path=str(path), name=name))
        down, up = _lora_layers(handle, info)
        for suffix, layer in ((DOWN, down), (UP, up)):
            if tuple(tensors[suffix].shape) != tuple(layer.weight.shape):
                raise NetworkWeightsMismatch(Msg.of(
                    "weights.shape", path=str(path), name=f"{name}{suffix}", shape=str(list(tensors[suffix].shape)),
                    wanted=str(list(layer.weight.shape)), rank=info.rank,
                    setting="conv_dim" if _is_conv3x3(layer) else "network_dim", file_rank=_file_rank(tensors[DOWN])))
        if ALPHA in tensors and abs(float(tensors[ALPHA]) - info.alpha) > 1e-3 * max(1.0, info.alpha):
            raise NetworkWeightsMismatch(Msg.of("weights.alpha", path=str(path), name=name,
                                                file_alpha=f"{float(tensors[ALPHA]):g}", alpha=f"{info.alpha:g}"))
        pending.append((down, up, tensors[DOWN], tensors[UP]))
        if has_dora:
            magnitude, shape = _magnitude(handle, info)
            wanted = [shape[0], *[1] * (len(shape) - 1)]
            if DORA not in tensors or list(tensors[DORA].shape) != wanted:
                got = list(tensors[DORA].shape) if DORA in tensors else "nothing"
                raise NetworkWeightsMismatch(Msg.of("weights.dora_shape", path=str(path), name=f"{name}{DORA}",
                                                    got=str(got), wanted=str(wanted)))
            magnitudes.append((magnitude, tensors[DORA]))
    with torch.no_grad():  # only after every module was checked: all or nothing
        for down, up, down_w, up_w in pending:
            down.weight.copy_(down_w.to(down.weight.dtype))
            up.weight.copy_(up_w.to(up.weight.dtype))
        for magnitude, value in magnitudes:
            magnitude.copy_(value.reshape(magnitude.shape).to(magnitude.dtype))
    return sorted(set(handle.modules) - set(by_module))


def _load_lycoris(handle: LoraHandle, path: Path, state: dict[str, torch.Tensor], kind: str | None) -> list[str]:
    """network_weights for LoHa / LoKr: the file must be the same algorithm with the same tensors and shapes."""
    lora_type = handle.network.lora_type
    if kind != lora_type:
        what = Msg.of("weights.what.lycoris", kind=kind) if kind else Msg.of("weights.what.lora")
        raise NetworkWeightsMismatch(Msg.of("weights.other_type", path=str(path), what=what, lora_type=lora_type,
                                            kind=kind or Msg.of("weights.kind.standard")))
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, suffix = key.rpartition(".")
        if suffix not in lycoris.KEYS[kind] and suffix != "alpha":
            raise NetworkWeightsMismatch(Msg.of("weights.unexpected_key", path=str(path), key=key, kind=kind))
        by_module.setdefault(module, {})[suffix] = value
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (our parameter, the file's value)
    for name, tensors in by_module.items():
        info = handle.modules.get(name)
        if info is None:
            raise NetworkWeightsMismatch(Msg.of("weights.unknown_module", path=str(path), why=_why_unknown(handle, name)))
        layer = handle.model(info.part).get_submodule(info.path)
        ours = lycoris.module_tensors(layer, kind)
        theirs = {k: v for k, v in tensors.items() if k != "alpha"}
        shapes = {k: list(v.shape) for k, v in theirs.items()}
        wanted = {k: list(v.shape) for k, v in ours.items()}
        if shapes != wanted:
            setting = "conv_dim" if _is_conv3x3(getattr(layer, "base_layer", layer)) else "network_dim"
            extra = ", factor, decompose_both" if kind == "LoKr" else ""
            raise NetworkWeightsMismatch(Msg.of("weights.lycoris_shape", path=str(path), name=name, shapes=str(shapes),
                                                kind=kind, wanted=str(wanted), setting=setting, extra=extra))
        full_factors = kind == "LoKr" and set(ours) == {"lokr_w1", "lokr_w2"}  # scale 1 whatever the alpha (inf in
        # an fp16 file of sd-scripts/LyCORIS, whose alpha = rank 100000 overflows)
        if "alpha" in tensors and not full_factors and abs(float(tensors["alpha"]) - info.alpha) > 1e-3 * max(1.0, info.alpha):
            raise NetworkWeightsMismatch(Msg.of("weights.alpha", path=str(path), name=name,
                                                file_alpha=f"{float(tensors['alpha']):g}", alpha=f"{info.alpha:g}"))
        pending.extend((ours[k], theirs[k]) for k in ours)
    with torch.no_grad():  # all or nothing, as for LoRA files
        for param, value in pending:
            param.copy_(value.to(param.dtype))
    return sorted(set(handle.modules) - set(by_module))


def _to_cpu(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = weight.detach().to(dtype=dtype)
    # a model built on the meta device (names and shapes only) stays there
    return t if t.device.type == "meta" else t.to("cpu").contiguous()


def _lora_layers(handle: LoraHandle, info: LoraModule) -> tuple[nn.Module, nn.Module]:
    module = handle.model(info.part).get_submodule(info.path)
    return module.lora_A[ADAPTER], module.lora_B[ADAPTER]


def _why_unknown(handle: LoraHandle, name: str) -> Msg:
    if handle.family == "sdxl":
        return _why_unknown_sdxl(handle, name)
    if name.startswith("lora_te_") and not handle.train_text_encoder:
        return Msg.of("weights.why.te_not_trained", name=name)
    if name.startswith("lora_unet_") and not handle.train_unet:
        return Msg.of("weights.why.unet_not_trained", name=name)
    if name.startswith(("lora_te1_", "lora_te2_")) or "input_blocks" in name or "output_blocks" in name:
        return Msg.of("weights.why.sdxl_lora")
    if handle.network.lora_type == "Standard" and name.startswith("lora_unet_") and ("resnets" in name or "samplers" in name):
        return Msg.of("weights.why.locon", name=name)
    return Msg.of("weights.why.not_part_sd15", name=name)


_SDXL_LOCON = re.compile(r"_(in_layers_2|out_layers_3|emb_layers_1|skip_connection|op|conv)$")  # resnets, samplers


def _why_unknown_sdxl(handle: LoraHandle, name: str) -> Msg:
    for prefix, on, what, setting in (("lora_te1_", handle.train_text_encoder, "1", "text_encoder_lr"),
                                      ("lora_te2_", handle.train_text_encoder_2, "2", "text_encoder_2_lr")):
        if name.startswith(prefix) and not on:
            return Msg.of("weights.why.te_n_not_trained", n=what, name=name, setting=setting)
    if name.startswith("lora_unet_") and not handle.train_unet:
        return Msg.of("weights.why.unet_not_trained", name=name)
    if name.startswith("lora_te_") or "down_blocks" in name or "up_blocks" in name:
        return Msg.of("weights.why.sd15_lora")
    if handle.network.lora_type == "Standard" and name.startswith("lora_unet_") and _SDXL_LOCON.search(name):
        return Msg.of("weights.why.locon", name=name)
    return Msg.of("weights.why.not_part_sdxl", name=name)


def _is_conv3x3(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3)


def _file_rank(down: torch.Tensor) -> int:
    return int(down.shape[0])
