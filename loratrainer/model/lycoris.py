"""LyCORIS LoHa and LoKr: peft's own adapters on Kohya's module set, and the LyCORIS Kohya-layout tensors.

Training uses peft's `LoHaConfig` / `LoKrConfig` (injected by model.lora like the LoRA config). peft's parameters
already carry LyCORIS's names and shapes (lycoris/modules/loha.py and lokr.py in KohakuBlueleaf/LyCORIS), so a
module `<name>` is saved as `<name>.hada_w1_a` ... / `<name>.lokr_w1` ... plus `<name>.alpha`, exactly the keys
A1111 (extensions-builtin/Lora/network_hada.py, network_lokr.py) and ComfyUI (comfy/weight_adapter/loha.py,
lokr.py) read. docs/lycoris.md has the layout and the arithmetic.

One scale differs between peft and the loaders: peft always multiplies a LoKr update by alpha / rank, while LyCORIS,
A1111 and ComfyUI use scale 1 when both Kronecker factors are full matrices (no rank to divide by; LyCORIS sets
alpha = rank there). We give those modules alpha = rank in peft's alpha_pattern, so training, the file and the
loaders agree; the file stores alpha = rank for them, as LyCORIS does.
"""

from __future__ import annotations

import re

import torch
from peft import LoHaConfig, LoKrConfig
from peft.tuners.lokr.layer import factorization
from torch import nn

from loratrainer.config import NetworkSettings

ADAPTER = "default"
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
KEYS = {"LoHa": LOHA_KEYS, "LoKr": LOKR_KEYS}
ALGO = {"LoHa": "loha", "LoKr": "lokr"}  # LyCORIS's algo= names (lycoris/kohya.py)


def peft_config(network: NetworkSettings, model: nn.Module, linear: list[str], conv: list[str]):
    """The peft config for `network.lora_type` (LoHa / LoKr) on exactly `linear` + `conv` (module paths)."""
    rank_pattern = {re.escape(p): network.conv_dim for p in conv}
    alpha_pattern = {re.escape(p): network.conv_alpha for p in conv}
    common = dict(
        r=network.network_dim,
        alpha=network.network_alpha,
        rank_dropout=network.rank_dropout,
        module_dropout=network.module_dropout,
        # LyCORIS's use_tucker: the CP/Tucker form (hada_t1/t2, lokr_t2) for convolutions larger than 1x1
        use_effective_conv2d=network.use_tucker,
        target_modules=linear + conv,
    )
    if network.lora_type == "LoHa":
        return LoHaConfig(**common, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    for path in linear + conv:
        r = network.conv_dim if path in conv else network.network_dim
        if lokr_full_matrices(model.get_submodule(path), r, network.factor, network.decompose_both):
            alpha_pattern[re.escape(path)] = float(r)  # scale 1, as LyCORIS and the loaders use for full factors
    return LoKrConfig(
        **common, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, decompose_factor=network.factor,
        decompose_both=network.decompose_both,
        init_weights="lycoris",  # LyCORIS's init: the larger factor's second matrix (or w2) starts at zero
    )


def lokr_full_matrices(module: nn.Module, r: int, factor: int, decompose_both: bool) -> bool:
    """Whether peft's LoKr makes both Kronecker factors full matrices for `module` (its update_layer rule)."""
    if isinstance(module, nn.Linear):
        in_dim, out_dim = module.in_features, module.out_features
    else:
        in_dim, out_dim = module.in_channels // module.groups, module.out_channels
    (out_l, out_k), (in_m, in_n) = factorization(out_dim, factor), factorization(in_dim, factor)
    use_w1 = not (decompose_both and r < max(out_l, in_m) / 2)
    use_w2 = r >= max(out_k, in_n) / 2
    return use_w1 and use_w2


def module_tensors(layer: nn.Module, lora_type: str) -> dict[str, torch.Tensor]:
    """{LyCORIS key suffix: parameter} of one injected module (only the tensors this module has)."""
    return {key: getattr(layer, key)[ADAPTER] for key in KEYS[lora_type] if ADAPTER in getattr(layer, key)}


def module_alpha(layer: nn.Module) -> float:
    return float(layer.alpha[ADAPTER])


def module_rank(layer: nn.Module) -> int:
    return int(layer.r[ADAPTER])


def file_type(keys) -> str | None:
    """'LoHa' / 'LoKr' when a state dict's keys are LyCORIS LoHa / LoKr tensors, else None."""
    suffixes = {k.rsplit(".", 1)[-1] for k in keys}
    if suffixes & set(LOHA_KEYS):
        return "LoHa"
    if suffixes & set(LOKR_KEYS):
        return "LoKr"
    return None


def network_args(network: NetworkSettings) -> dict[str, str]:
    """ss_network_args as sd-scripts writes them for `--network_module lycoris.kohya` (every value a string,
    as the Kohya GUI passes them on the command line; lycoris/kohya.py reads these names)."""
    args = {
        "conv_dim": str(network.conv_dim),
        "conv_alpha": str(network.conv_alpha),
        "algo": ALGO[network.lora_type],
        "use_tucker": str(network.use_tucker),
        "rank_dropout": str(network.rank_dropout),
        "module_dropout": str(network.module_dropout),
        "use_scalar": "False",
        "train_norm": "False",
        "dora_wd": "False",
    }
    if network.lora_type == "LoKr":
        args["factor"] = str(network.factor)
        args["decompose_both"] = str(network.decompose_both)
    return args


def dora_network_args(network: NetworkSettings) -> dict[str, str]:
    """ss_network_args of a DoRA file (Standard or LoCon with dora_wd), as sd-scripts writes them for
    `--network_module lycoris.kohya --network_args algo=locon dora_wd=True ...` (the Kohya GUI's LyCORIS/LoCon,
    kohya_gui/lora_gui.py). Standard adapts LyCORIS's `attn-mlp` preset's layers (no convolutions; LyCORIS reads a
    conv_dim of 0 as network_dim, so the preset says it). wd_on_output True is LyCORIS's default (lycoris/kohya.py),
    said out loud: one magnitude per output channel."""
    if network.lora_type == "LoCon":
        args = {"conv_dim": str(network.conv_dim), "conv_alpha": str(network.conv_alpha)}
    else:
        args = {"preset": "attn-mlp"}
    return {**args, "algo": "locon", "dora_wd": "True", "wd_on_output": "True"}
