"""LyCORIS LoHa and LoKr: peft's adapters saved in LyCORIS's Kohya layout, proven by the loaders' own arithmetic.

Neither A1111 nor ComfyUI runs here, so `loader_delta` re-implements, from their source, how they turn a module's
saved tensors into a weight update: ComfyUI comfy/weight_adapter/loha.py and lokr.py (calculate_weight, strength 1);
A1111 extensions-builtin/Lora/network_hada.py and network_lokr.py compute the same (network.py calc_scale: alpha/dim,
1.0 when there is no dim). It is written independently of loratrainer.model.lycoris.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from loratrainer.config import NetworkSettings, TrainingConfig, with_values
from loratrainer.model.assets import SD15_CONFIG_DIR
from loratrainer.model.errors import NetworkWeightsMismatch
from loratrainer.model.kohya_format import load_network_weights, lora_state_dict
from loratrainer.model.lora import inject_lora
from loratrainer.model.saving import save_lora
from tests.test_model_saving import metadata
from tests.tiny_sd import build_tiny_components


def loader_delta(sd: dict[str, torch.Tensor], name: str, shape: torch.Size) -> torch.Tensor:
    """The weight update ComfyUI adds for module `name` (strength 1), computed in float64."""
    def get(key):
        t = sd.get(f"{name}.{key}")
        return None if t is None else t.double()

    alpha = get("alpha")
    alpha = None if alpha is None else float(alpha)
    if get("hada_w1_a") is not None:  # comfy/weight_adapter/loha.py
        w1a, w1b, w2a, w2b = get("hada_w1_a"), get("hada_w1_b"), get("hada_w2_a"), get("hada_w2_b")
        scale = alpha / w1b.shape[0] if alpha is not None else 1.0
        if get("hada_t1") is not None:
            m1 = torch.einsum("i j k l, j r, i p -> p r k l", get("hada_t1"), w1b, w1a)
            m2 = torch.einsum("i j k l, j r, i p -> p r k l", get("hada_t2"), w2b, w2a)
        else:
            m1, m2 = torch.mm(w1a, w1b), torch.mm(w2a, w2b)
        return (m1 * m2).reshape(shape) * scale
    # comfy/weight_adapter/lokr.py
    dim = None
    w1 = get("lokr_w1")
    if w1 is None:
        dim = get("lokr_w1_b").shape[0]
        w1 = torch.mm(get("lokr_w1_a"), get("lokr_w1_b"))
    w2 = get("lokr_w2")
    if w2 is None:
        dim = get("lokr_w2_b").shape[0]
        w2 = torch.mm(get("lokr_w2_a"), get("lokr_w2_b"))  # (lokr_t2, Tucker, is refused for LoKr: see config)
    if len(w2.shape) == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return torch.kron(w1, w2).reshape(shape) * scale


def _randomise(handle, seed=1, std=0.2):
    torch.manual_seed(seed)
    with torch.no_grad():  # fresh adapters are zero in one factor: make every tensor count
        for p in handle.unet_parameters() + handle.text_encoder_parameters():
            p.normal_(std=std)


CASES = {
    "loha": dict(lora_type="LoHa", network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1),
    "loha-tucker": dict(lora_type="LoHa", network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=3, use_tucker=True),
    # tiny layers are 32..256 wide: rank 4 makes both Kronecker factors full (scale 1 in every loader) in the
    # narrow ones, low-rank w2 (scale alpha/rank) in the wide ones
    "lokr-mixed": dict(lora_type="LoKr", network_dim=4, network_alpha=1, conv_dim=4, conv_alpha=1),
    "lokr-lowrank": dict(lora_type="LoKr", network_dim=2, network_alpha=1, conv_dim=2, conv_alpha=2, factor=4),
    "lokr-both": dict(lora_type="LoKr", network_dim=2, network_alpha=0.5, conv_dim=2, conv_alpha=1, factor=8, decompose_both=True),
}
# the tensors each case must produce somewhere (so every branch of the loaders' arithmetic is exercised)
EXPECTED_SUFFIXES = {
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "loha-tucker": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"},
    "lokr-mixed": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
    "lokr-lowrank": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    "lokr-both": {"lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_saved_module_gives_the_loaders_the_delta_peft_trained(tmp_path, case):
    net = NetworkSettings(**CASES[case])
    handle = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    _randomise(handle)
    path = save_lora(tmp_path / "x.safetensors", lora_state_dict(handle, "float"), {})
    sd = load_file(str(path))
    assert {k.rsplit(".", 1)[1] for k in sd} == EXPECTED_SUFFIXES[case]
    assert all(re.fullmatch(r"lora_(unet|te_text_model)_[a-z0-9_]+", k.rsplit(".", 1)[0]) for k in sd)
    kinds = set()
    for name, info in handle.modules.items():
        layer = handle.model(info.part).get_submodule(info.path)
        base = layer.get_base_layer()
        kinds.add((type(base).__name__, tuple(getattr(base, "kernel_size", ()))))
        with torch.no_grad():
            theirs = loader_delta(sd, name, base.weight.shape)
            ours = layer.get_delta_weight("default").double()  # peft's own merged delta (what training applied)
        assert ours.shape == base.weight.shape
        assert ours.abs().max() > 1e-4, name  # a delta that does something
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6 * float(ours.abs().max()), msg=name)
    assert kinds == {("Linear", ()), ("Conv2d", (1, 1)), ("Conv2d", (3, 3))}  # linear, 1x1 and 3x3 modules checked


def test_lokr_full_matrices_use_scale_one_as_lycoris_does(tmp_path):
    """A huge LoKr rank (the Kohya GUI presets' 100000) means full matrices; LyCORIS and the loaders scale them by 1."""
    net = NetworkSettings(lora_type="LoKr", network_dim=100000, network_alpha=1, conv_dim=100000, conv_alpha=1, factor=6)
    handle = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    _randomise(handle)
    save_lora(tmp_path / "fp16.safetensors", lora_state_dict(handle, "fp16"), {})  # alpha 100000 > fp16's 65504
    sd = load_file(str(tmp_path / "fp16.safetensors"))
    assert {v.dtype for k, v in sd.items() if not k.endswith(".alpha")} == {torch.float16}
    assert not any(k.endswith(("_a", "_b")) for k in sd)  # no low-rank factors anywhere
    for info in handle.modules.values():
        layer = handle.model(info.part).get_submodule(info.path)
        assert layer.scaling["default"] == 1.0 and info.alpha == info.rank == 100000
    assert {float(v) for k, v in sd.items() if k.endswith(".alpha")} == {100000.0}
    # a file written by sd-scripts in fp16 has alpha inf there (it ignores the overflow): it continues all the same
    save_file({k: (torch.tensor(float("inf"), dtype=torch.float16) if k.endswith(".alpha") else v) for k, v in sd.items()},
              tmp_path / "sd-scripts.safetensors")
    again = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    assert load_network_weights(again, tmp_path / "sd-scripts.safetensors") == []


@pytest.mark.parametrize("lora_type", ["LoHa", "LoKr"])
def test_metadata_is_what_lycoris_kohya_writes(tmp_path, lora_type):
    config = with_values(TrainingConfig(), {"lora_type": lora_type, "network_dim": 8, "network_alpha": 4, "conv_dim": 4,
                                            "conv_alpha": 2, "rank_dropout": 0.1, "module_dropout": 0.05})
    handle = inject_lora(build_tiny_components(), config.network, train_unet=True, train_text_encoder=True)
    path = save_lora(tmp_path / "m.safetensors", lora_state_dict(handle), metadata(config))
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4.0"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == lora_type.lower() and args["conv_dim"] == "4" and args["conv_alpha"] == "2.0"
    assert args["rank_dropout"] == "0.1" and args["module_dropout"] == "0.05" and args["use_tucker"] == "False"
    assert ("factor" in args) == (lora_type == "LoKr")
    assert all(isinstance(v, str) for v in args.values())


def test_peft_dropouts_are_set_from_the_settings():
    net = NetworkSettings(lora_type="LoHa", rank_dropout=0.25, module_dropout=0.125)
    handle = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    layer = handle.unet.get_submodule(next(iter(handle.modules.values())).path)
    assert layer.rank_dropout["default"] == 0.25 and layer.module_dropout["default"] == 0.125


@pytest.mark.parametrize("case", ["loha", "lokr-lowrank", "lokr-both", "loha-tucker"])
def test_network_weights_continue_a_lycoris_file(tmp_path, case):
    from tests.test_model_lora import assert_network_weights_round_trip

    assert_network_weights_round_trip(tmp_path, NetworkSettings(**CASES[case]))


def test_network_weights_mismatches_are_explained_and_load_nothing(tmp_path):
    loha = NetworkSettings(**CASES["loha"])
    first = inject_lora(build_tiny_components(), loha, train_unet=True, train_text_encoder=True)
    _randomise(first)
    save_file(lora_state_dict(first, "float"), tmp_path / "loha.safetensors")

    lokr = inject_lora(build_tiny_components(), NetworkSettings(**CASES["lokr-lowrank"]), train_unet=True, train_text_encoder=True)
    with pytest.raises(NetworkWeightsMismatch, match="LyCORIS LoHa file but the LoRA type is LoKr"):
        load_network_weights(lokr, tmp_path / "loha.safetensors")
    standard = inject_lora(build_tiny_components(), NetworkSettings(), train_unet=True, train_text_encoder=True)
    with pytest.raises(NetworkWeightsMismatch, match="set the LoRA type to LoHa"):
        load_network_weights(standard, tmp_path / "loha.safetensors")

    other_rank = inject_lora(build_tiny_components(), NetworkSettings(**{**CASES["loha"], "network_dim": 8}),
                             train_unet=True, train_text_encoder=True)
    before = {k: v.clone() for k, v in lora_state_dict(other_rank, "float").items()}
    with pytest.raises(NetworkWeightsMismatch, match=r"set the rank \(network_dim"):
        load_network_weights(other_rank, tmp_path / "loha.safetensors")
    assert all(torch.equal(before[k], v) for k, v in lora_state_dict(other_rank, "float").items())  # all or nothing

    other_alpha = inject_lora(build_tiny_components(), NetworkSettings(**{**CASES["loha"], "network_alpha": 4}),
                              train_unet=True, train_text_encoder=True)
    with pytest.raises(NetworkWeightsMismatch, match="alpha 2"):
        load_network_weights(other_alpha, tmp_path / "loha.safetensors")


# -- full SD1.5 on the meta device: what a user's file holds ------------------------------------------------------

def _full_sd15():
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    return SimpleNamespace(unet=unet, text_encoder=te)


def _file_bytes(sd: dict[str, torch.Tensor]) -> int:
    """The .safetensors size without metadata: 8-byte length + JSON header + fp16 payload (meta tensors have no data)."""
    header = {k: {"dtype": "F16", "shape": list(v.shape), "data_offsets": [0, v.numel() * 2]} for k, v in sd.items()}
    payload = sum(v.numel() * 2 for v in sd.values())
    return 8 + len(json.dumps(header, separators=(",", ":"))) + payload


@pytest.mark.parametrize("lora_type", ["LoHa", "LoKr"])
def test_full_sd15_module_count_and_file_size_at_dim_8_conv_4(lora_type, capsys):
    net = NetworkSettings(lora_type=lora_type, network_dim=8, network_alpha=8, conv_dim=4, conv_alpha=4)
    handle = inject_lora(_full_sd15(), net, train_unet=True, train_text_encoder=True)
    sd = lora_state_dict(handle, "fp16")
    unet = sum(k.startswith("lora_unet_") for k in handle.modules)
    te = sum(k.startswith("lora_te_text_model_") for k in handle.modules)
    conv3 = sum(1 for info in handle.modules.values() if info.part == "unet"
                and getattr(handle.unet.get_submodule(info.path).get_base_layer(), "kernel_size", None) == (3, 3))
    params = sum(v.numel() for k, v in sd.items() if not k.endswith(".alpha"))
    size = _file_bytes(sd)
    with capsys.disabled():
        print(f"\n{lora_type} dim 8 / conv 4, full SD1.5: {len(handle.modules)} modules ({unet} UNet incl. {conv3} 3x3 "
              f"convs, {te} text encoder), {len(sd)} tensors, {params} parameters, {size} bytes fp16 without metadata")
    # LoCon's module set (sd-scripts' create_modules, tests/test_model_sd15_full_size.py): 192 UNet attention/MLP
    # layers + 50 3x3 convs (22 resnets x 2, 3 down-, 3 upsamplers) + 22 time_emb_proj + 14 1x1 conv_shortcut
    # + 72 text-encoder linears
    resnet_linears = sum(k.endswith(("time_emb_proj", "conv_shortcut")) for k in handle.modules)
    assert (len(handle.modules), unet, te, conv3, resnet_linears) == (350, 278, 72, 50, 36)
    assert (len(sd), params, size) == SD15_SIZES[lora_type]
    if lora_type == "LoHa":  # two rank-r products per module: exactly twice a LoCon of the same ranks
        locon = NetworkSettings(lora_type="LoCon", network_dim=8, network_alpha=8, conv_dim=4, conv_alpha=4)
        locon_sd = lora_state_dict(inject_lora(_full_sd15(), locon, train_unet=True, train_text_encoder=True), "fp16")
        assert params == 2 * sum(v.numel() for k, v in locon_sd.items() if not k.endswith(".alpha"))


# (tensors, parameters, bytes of an fp16 file without metadata), measured with this test
SD15_SIZES = {"LoHa": (1750, 15_115_264, 30_446_031), "LoKr": (1400, 506_032, 1_180_239)}


@pytest.mark.parametrize("case", ["loha", "lokr-mixed", "lokr-both"])
def test_max_norm_scales_each_too_large_module_update_to_the_limit(case):
    from loratrainer.train.max_norm import apply_max_norm

    handle = inject_lora(build_tiny_components(), NetworkSettings(**CASES[case]), train_unet=True, train_text_encoder=True)
    _randomise(handle, std=0.5)

    @torch.no_grad()
    def norms():
        return {n: float(handle.model(i.part).get_submodule(i.path).get_delta_weight("default").norm())
                for n, i in handle.modules.items()}

    before = norms()
    limit = sorted(before.values())[len(before) // 2]  # half the modules are above it
    scaled, largest = apply_max_norm(handle, limit)
    after = norms()
    assert scaled == sum(v > limit for v in before.values()) > 0 and largest == pytest.approx(max(before.values()))
    for name, norm in before.items():
        assert after[name] == pytest.approx(min(norm, limit), rel=1e-4), name
