"""DoRA (LyCORIS dora_wd): peft's use_dora saved as LyCORIS saves it, proven by the loaders' own arithmetic.

LyCORIS (lycoris/modules/locon.py, lycoris-lora 4.1.3) writes, beside lora_down/lora_up/alpha, one `dora_scale` per
module: with its default wd_on_output the norm of each output row of the original weight,
`norm(org_weight.reshape(out, -1), dim=1).reshape(out, *[1] * (dim - 1))`, i.e. [out, 1] for a Linear and
[out, 1, 1, 1] for a Conv2d, trained from there. ComfyUI (comfy/weight_adapter/lora.py calculate_weight and
base.py weight_decompose) applies such a file as: diff = up.flatten(1) @ down.flatten(1) * alpha / rank,
W' = (W + diff) * dora_scale / norm, where the norm is per output row because dora_scale.shape[0] == out
(`wd_on_output_axis`). LyCORIS's own weight_decompose (functional/general.py) takes that norm of W + diff;
ComfyUI's current code takes it of W alone, a known bug with an open fix (Comfy-Org/ComfyUI PR 15458, "normalize
output-axis DoRA with adapted weights"). `comfy_delta` below follows LyCORIS (= ComfyUI with that fix), written
here independently of loratrainer; `test_current_comfyui_norm_differs` measures the bug instead of hiding it.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loratrainer.config import NetworkSettings, TrainingConfig, with_values
from loratrainer.model.errors import NetworkWeightsMismatch
from loratrainer.model.kohya_format import load_network_weights, lora_state_dict
from loratrainer.model.lora import inject_lora
from loratrainer.model.saving import save_lora
from tests.test_model_saving import metadata
from tests.tiny_sd import build_tiny_components


def comfy_delta(sd: dict[str, torch.Tensor], name: str, weight: torch.Tensor, *, fixed: bool = True) -> torch.Tensor:
    """What ComfyUI adds to `weight` for module `name` at strength 1 (float64). fixed=False: ComfyUI's current
    output-axis norm (of the base weight only)."""
    w = weight.double()
    up, down = sd[f"{name}.lora_up.weight"].double(), sd[f"{name}.lora_down.weight"].double()
    alpha = float(sd[f"{name}.alpha"]) / down.shape[0]
    diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(w.shape) * alpha
    dora_scale = sd[f"{name}.dora_scale"].double()
    calc = w + diff
    assert dora_scale.shape[0] == w.shape[0]  # ComfyUI's wd_on_output_axis test
    normed = calc if fixed else w
    norm = normed.reshape(w.shape[0], -1).norm(dim=1, keepdim=True).reshape(w.shape[0], *[1] * (w.dim() - 1))
    return calc * (dora_scale / norm) - w


def _randomise(handle, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():  # lora_B starts at zero and the magnitude at the weight's norm: make every tensor count
        for part in handle.parts():
            for name, p in handle.model(part).named_parameters():
                if "lora_" in name:
                    p.add_(torch.randn_like(p) * (0.05 * p.abs().mean() + 0.05))


def _comfy_and_peft_delta(handle, sd, name, info):
    """One module's weight change as ComfyUI computes it from the file, and as peft's own DoRA merge makes it
    (magnitude / ||W + BA|| * (W + BA)); the base layer, and its weight before the merge."""
    layer = handle.model(info.part).get_submodule(info.path)
    base = layer.get_base_layer()
    original = base.weight.detach().clone()
    with torch.no_grad():
        theirs = comfy_delta(sd, name, original)
        layer.merge()
        ours = (base.weight.detach() - original).double()
    return theirs, ours, base, original


def _handle(lora_type="LoCon", **kw):
    net = NetworkSettings(lora_type=lora_type, dora_wd=True, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1, **kw)
    return inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)


def _kind(base) -> tuple:
    return type(base).__name__, tuple(getattr(base, "kernel_size", ()))


def test_fresh_dora_scale_is_lycoris_init_in_its_shape():
    """Before training the magnitude is LyCORIS's wd_on_output init of the same weight, in LyCORIS's shape."""
    handle = _handle()
    sd = lora_state_dict(handle, "float")
    kinds = set()
    for name, info in handle.modules.items():
        w = handle.model(info.part).get_submodule(info.path).get_base_layer().weight.detach().float()
        lycoris = torch.norm(w.reshape(w.shape[0], -1), dim=1, keepdim=True).reshape(w.shape[0], *[1] * (w.dim() - 1))
        assert sd[f"{name}.dora_scale"].shape == lycoris.shape, name
        torch.testing.assert_close(sd[f"{name}.dora_scale"], lycoris, msg=name)
        kinds.add((w.dim(), tuple(w.shape[2:])))
    assert kinds == {(2, ()), (4, (1, 1)), (4, (3, 3))}


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon"])
def test_every_saved_module_gives_comfyui_the_delta_peft_merges(tmp_path, lora_type):
    handle = _handle(lora_type)
    _randomise(handle)
    path = save_lora(tmp_path / "dora.safetensors", lora_state_dict(handle, "float"), {})
    sd = load_file(str(path))
    assert {k.rsplit(".", 1)[1] for k in sd} == {"weight", "alpha", "dora_scale"}
    assert len([k for k in sd if k.endswith(".dora_scale")]) == len(handle.modules)
    kinds, worst = set(), 0.0
    for name, info in handle.modules.items():
        theirs, ours, base, original = _comfy_and_peft_delta(handle, sd, name, info)
        assert ours.abs().max() > 1e-3, name  # the module changes the weight
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5 * float(original.abs().max()), msg=name)
        kinds.add(_kind(base))
        # without dora_scale (a plain LoRA loader) the update would be another one: the magnitude matters
        plain = (sd[f"{name}.lora_up.weight"].double().flatten(1) @ sd[f"{name}.lora_down.weight"].double().flatten(1))
        worst = max(worst, float((plain.reshape(ours.shape) * info.alpha / info.rank - ours).abs().max()))
    expected = {("Linear", ()), ("Conv2d", (1, 1))} | ({("Conv2d", (3, 3))} if lora_type == "LoCon" else set())
    assert kinds == expected
    assert worst > 1e-2


def test_sdxl_dora_file_gives_comfyui_the_delta_peft_merges(tmp_path):
    """SDXL: the same layout under sd-scripts' SDXL names, both text encoders included."""
    from tests.tiny_sdxl import build_tiny_sdxl

    net = NetworkSettings(lora_type="LoCon", dora_wd=True, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1)
    handle = inject_lora(build_tiny_sdxl(), net, train_unet=True, train_text_encoder=True)
    _randomise(handle, seed=2)
    sd = load_file(str(save_lora(tmp_path / "xl.safetensors", lora_state_dict(handle, "float"), {})))
    prefixes = set()
    for name, info in handle.modules.items():
        theirs, ours, _, original = _comfy_and_peft_delta(handle, sd, name, info)
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5 * float(original.abs().max()), msg=name)
        prefixes.add(name.split("_")[1])
    assert prefixes == {"unet", "te1", "te2"}


def test_current_comfyui_norm_differs(tmp_path):
    """ComfyUI's current output-axis code divides by the base weight's norm: it applies a trained DoRA slightly
    differently (measured here, fixed by Comfy-Org/ComfyUI PR 15458); with an untrained one both agree."""
    handle = _handle()
    sd = lora_state_dict(handle, "float")
    name, info = next(iter(handle.modules.items()))
    w = handle.model(info.part).get_submodule(info.path).get_base_layer().weight.detach()
    fresh = comfy_delta(sd, name, w, fixed=False)
    assert float(fresh.abs().max()) < 1e-5  # untrained: no change either way
    _randomise(handle)
    sd = lora_state_dict(handle, "float")
    gap = (comfy_delta(sd, name, w, fixed=False) - comfy_delta(sd, name, w)).abs().max()
    assert float(gap) > 1e-4


def test_metadata_says_lycoris_dora(tmp_path):
    for lora_type, extra in (("LoCon", {"conv_dim": "2", "conv_alpha": "1.0"}), ("Standard", {"preset": "attn-mlp"})):
        config = with_values(TrainingConfig(), {"lora_type": lora_type, "dora_wd": True, "network_dim": 4, "conv_dim": 2})
        handle = inject_lora(build_tiny_components(), config.network, train_unet=True, train_text_encoder=True)
        path = save_lora(tmp_path / f"{lora_type}.safetensors", lora_state_dict(handle), metadata(config))
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        assert meta["ss_network_module"] == "lycoris.kohya"
        assert json.loads(meta["ss_network_args"]) == {**extra, "algo": "locon", "dora_wd": "True", "wd_on_output": "True"}


def test_network_weights_continue_a_dora_file(tmp_path):
    first = _handle()
    _randomise(first)
    save_file(lora_state_dict(first, "float"), tmp_path / "dora.safetensors")
    again = _handle()
    assert load_network_weights(again, tmp_path / "dora.safetensors") == []
    saved, loaded = load_file(str(tmp_path / "dora.safetensors")), lora_state_dict(again, "float")
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_dora_and_plain_files_are_not_mixed(tmp_path):
    first = _handle()
    save_file(lora_state_dict(first, "float"), tmp_path / "dora.safetensors")
    plain = inject_lora(build_tiny_components(), NetworkSettings(lora_type="LoCon", network_dim=4, network_alpha=2,
                                                                 conv_dim=2, conv_alpha=1),
                        train_unet=True, train_text_encoder=True)
    with pytest.raises(NetworkWeightsMismatch, match=r"DoRA file .* set DoRA \(weight-decomposed\) to on"):
        load_network_weights(plain, tmp_path / "dora.safetensors")
    save_file(lora_state_dict(plain, "float"), tmp_path / "plain.safetensors")
    dora = _handle()
    before = {k: v.clone() for k, v in lora_state_dict(dora, "float").items()}
    with pytest.raises(NetworkWeightsMismatch, match=r"without DoRA .* set DoRA \(weight-decomposed\) to off"):
        load_network_weights(dora, tmp_path / "plain.safetensors")
    # an input-axis file (LyCORIS wd_on_output=False: [1, in]) is refused by name, nothing loaded
    sd = lora_state_dict(first, "float")
    fc1 = next(k for k in sd if k.endswith("mlp_fc1.dora_scale"))
    w = first.text_encoder.get_submodule(first.modules[fc1[: -len(".dora_scale")]].path).get_base_layer().weight
    sd[fc1] = torch.ones(1, w.shape[1])
    save_file(sd, tmp_path / "in-axis.safetensors")
    with pytest.raises(NetworkWeightsMismatch, match="wd_on_output"):
        load_network_weights(dora, tmp_path / "in-axis.safetensors")
    assert all(torch.equal(before[k], v) for k, v in lora_state_dict(dora, "float").items())


@pytest.mark.parametrize("values", [{"lora_type": "LoHa", "dora_wd": True}, {"lora_type": "LoKr", "dora_wd": True},
                                    {"dora_wd": True, "save_diffusers_format": True}])
def test_dora_is_refused_where_it_cannot_be_kept_in_english_and_korean(values):
    from loratrainer.gui.form import FormError, values_to_config
    from loratrainer.gui.i18n import Translator

    with pytest.raises(ValueError, match=r"network\.dora_wd"):
        with_values(TrainingConfig(), values)
    with pytest.raises(FormError) as err:
        values_to_config({f"network.{k}" if k != "save_diffusers_format" else "saving.save_diffusers_format": v
                          for k, v in values.items()})
    text = Translator("ko").error_text(err.value)
    assert "DoRA (가중치 분해)" in text and "only" not in text, text
