"""LoRA injection and the Kohya tensor layout: module set, names, shapes, LoCon, init, parts, network_weights."""

import math
import re
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from loratrainer.config import NetworkSettings
from loratrainer.errors import UserError
from loratrainer.model.assets import SD15_CONFIG_DIR
from loratrainer.model.errors import NetworkWeightsMismatch
from loratrainer.model.kohya_format import load_network_weights, lora_state_dict
from loratrainer.model.lora import inject_lora
from tests.tiny_sd import build_tiny_components

# Kohya's rules written independently of the implementation: module paths by name, not by class
UNET_STANDARD = re.compile(
    r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\."
    r"(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))"
)
UNET_CONV3 = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets\.\d+\.conv[12]|(down|up)samplers\.0\.conv)")
# LoCon's network_dim modules in the resnets (sd-scripts networks/lora.py create_modules: "is_linear or
# is_conv2d_1x1 -> lora_dim" inside ResnetBlock2D)
UNET_RESNET_LINEAR = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.resnets\.\d+\.(time_emb_proj|conv_shortcut)")
TE_STANDARD = re.compile(r"(text_model\.)?encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])")


def expected_layout(unet, text_encoder, rank, *, conv_rank=None, te=True, unet_part=True):
    """Kohya key -> shape, derived from the model's module tree."""
    out = {}
    parts = ([("lora_unet_", unet, False)] if unet_part else []) + ([("lora_te_", text_encoder, True)] if te else [])
    for prefix, model, is_te in parts:
        for path, module in model.named_modules():
            module = getattr(module, "base_layer", module)
            standard = (TE_STANDARD if is_te else UNET_STANDARD).fullmatch(path) or (
                not is_te and conv_rank and UNET_RESNET_LINEAR.fullmatch(path))
            conv = not is_te and conv_rank and UNET_CONV3.fullmatch(path)
            if not (standard or conv):
                continue
            r = rank if standard else conv_rank
            name = prefix + (("text_model." if is_te and not path.startswith("text_model.") else "") + path).replace(".", "_")
            if isinstance(module, torch.nn.Linear):
                down, up = (r, module.in_features), (module.out_features, r)
            else:
                k = module.kernel_size
                down, up = (r, module.in_channels, *k), (module.out_channels, r, 1, 1)
            out[name + ".lora_down.weight"] = down
            out[name + ".lora_up.weight"] = up
            out[name + ".alpha"] = ()
    return out


def test_full_sd15_architecture_has_264_modules_and_792_tensors_named_as_kohya():
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    expected = expected_layout(unet, te, 4)
    handle = inject_lora(SimpleNamespace(unet=unet, text_encoder=te), NetworkSettings(network_dim=4, network_alpha=2),
                         train_unet=True, train_text_encoder=True)
    sd = lora_state_dict(handle, "fp16")
    assert len(handle.modules) == 264 and len(sd) == 792
    assert sum(k.startswith("lora_te_") for k in sd) == 72 * 3 and sum(k.startswith("lora_unet_") for k in sd) == 192 * 3
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # the examples of docs/kohya-compat.md section 4
    assert sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].shape == (4, 768)
    assert sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"].shape == (768, 4)
    assert sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].ndim == 0
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (4, 320, 1, 1)
    assert sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"].shape == (4, 320)


@pytest.fixture
def tiny():
    return build_tiny_components()


def test_tiny_standard_layout_alpha_and_dtype(tiny):
    handle = inject_lora(tiny, NetworkSettings(network_dim=4, network_alpha=2), train_unet=True, train_text_encoder=True)
    sd = lora_state_dict(handle, "fp16")
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_layout(tiny.unet, tiny.text_encoder, 4)
    assert {v.dtype for v in sd.values()} == {torch.float16}
    assert all(float(v) == 2.0 for k, v in sd.items() if k.endswith(".alpha"))
    assert {v.dtype for v in lora_state_dict(handle, "bf16").values()} == {torch.bfloat16}
    assert {v.dtype for v in lora_state_dict(handle, "float").values()} == {torch.float32}


def test_scale_is_alpha_over_rank_and_dropout_is_applied(tiny):
    handle = inject_lora(tiny, NetworkSettings(network_dim=8, network_alpha=2, network_dropout=0.25),
                         train_unet=True, train_text_encoder=True)
    for info in handle.modules.values():
        module = handle.model(info.part).get_submodule(info.path)
        assert module.scaling["default"] == pytest.approx(2 / 8)
        assert module.lora_dropout["default"].p == 0.25


def test_locon_adds_3x3_convs_with_conv_rank_and_alpha(tiny):
    net = NetworkSettings(network_dim=4, network_alpha=4, lora_type="LoCon", conv_dim=2, conv_alpha=1)
    handle = inject_lora(tiny, net, train_unet=True, train_text_encoder=True)
    sd = lora_state_dict(handle, "float")
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_layout(tiny.unet, tiny.text_encoder, 4, conv_rank=2)
    conv = [k for k in sd if "resnets" in k and k.endswith("conv1.lora_down.weight")]
    assert conv and all(sd[k].shape[-2:] == (3, 3) and sd[k].shape[0] == 2 for k in conv)
    assert any("downsamplers_0_conv" in k for k in sd) and any("upsamplers_0_conv" in k for k in sd)
    # the resnets' time-embedding linears and 1x1 shortcuts at network_dim / network_alpha, as sd-scripts' LoCon
    linear = [k for k in sd if k.endswith(("time_emb_proj.lora_down.weight", "conv_shortcut.lora_down.weight"))]
    assert any("time_emb_proj" in k for k in linear) and any("conv_shortcut" in k for k in linear)
    shortcut = [k for k in linear if "conv_shortcut" in k]
    assert all(sd[k].shape[0] == 4 and sd[k].shape[-2:] == (1, 1) for k in shortcut)
    assert all(float(sd[k.replace("lora_down.weight", "alpha")]) == 4.0 for k in linear)
    # nothing outside the blocks: no conv_in / conv_out / time embedding (sd-scripts adapts none of them)
    assert not any(k.startswith(("lora_unet_conv_", "lora_unet_time_embedding")) for k in sd)
    assert all(float(sd[k.replace("lora_down.weight", "alpha")]) == 1.0 for k in conv)
    module = tiny.unet.get_submodule("down_blocks.0.resnets.0.conv1")
    assert module.scaling["default"] == pytest.approx(1 / 2)


def test_kohya_init_down_kaiming_uniform_up_zero(tiny):
    handle = inject_lora(tiny, NetworkSettings(network_dim=16, network_alpha=1), train_unet=True, train_text_encoder=True)
    sd = lora_state_dict(handle, "float")
    for key, value in sd.items():
        if key.endswith("lora_up.weight"):
            assert not value.any(), key
        elif key.endswith("lora_down.weight"):
            fan_in = value[0].numel()
            bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)), as Kohya and nn.Linear
            assert value.abs().max() <= bound + 1e-6 and value.abs().max() > 0.5 * bound, key


def test_unet_only_has_no_text_encoder_adapters(tiny):
    handle = inject_lora(tiny, NetworkSettings(), train_unet=True, train_text_encoder=False)
    sd = lora_state_dict(handle)
    assert sd and not any(k.startswith("lora_te_") for k in sd)
    assert handle.text_encoder_parameters() == []
    assert not any("lora_" in n for n, _ in tiny.text_encoder.named_parameters())  # not even injected


def test_text_encoder_only_and_nothing_to_train(tiny):
    handle = inject_lora(tiny, NetworkSettings(), train_unet=False, train_text_encoder=True)
    assert all(k.startswith("lora_te_") for k in lora_state_dict(handle))
    with pytest.raises(UserError, match="nothing to train"):
        inject_lora(build_tiny_components(), NetworkSettings(), train_unet=False, train_text_encoder=False)


def test_only_lora_parameters_are_trainable(tiny):
    handle = inject_lora(tiny, NetworkSettings(network_dim=4), train_unet=True, train_text_encoder=True)
    trainable = {id(p) for m in (tiny.unet, tiny.text_encoder) for p in m.parameters() if p.requires_grad}
    params = handle.unet_parameters() + handle.text_encoder_parameters()
    assert trainable == {id(p) for p in params} and len(params) == 2 * len(handle.modules)
    assert {p.dtype for p in params} == {torch.float32}


def _randomise(handle, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in handle.unet_parameters() + handle.text_encoder_parameters():
            p.normal_(std=0.1)


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon"])
def test_network_weights_round_trip(tmp_path, lora_type):
    assert_network_weights_round_trip(tmp_path, NetworkSettings(network_dim=4, network_alpha=2, lora_type=lora_type, conv_dim=2, conv_alpha=1))


def assert_network_weights_round_trip(tmp_path, net: NetworkSettings) -> None:
    """A file saved from one network continues, tensor for tensor, in a fresh network of the same settings
    (test_model_lycoris.py uses it for LoHa and LoKr)."""
    first = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    _randomise(first)
    saved = lora_state_dict(first, "float")
    save_file(saved, tmp_path / "start.safetensors")
    second = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    assert load_network_weights(second, tmp_path / "start.safetensors") == []
    loaded = lora_state_dict(second, "float")
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_network_weights_standard_file_into_locon_leaves_convs_fresh(tmp_path):
    first = inject_lora(build_tiny_components(), NetworkSettings(network_dim=4), train_unet=True, train_text_encoder=True)
    save_file(lora_state_dict(first, "float"), tmp_path / "std.safetensors")
    locon = NetworkSettings(network_dim=4, lora_type="LoCon", conv_dim=2)
    second = inject_lora(build_tiny_components(), locon, train_unet=True, train_text_encoder=True)
    fresh = load_network_weights(second, tmp_path / "std.safetensors")
    assert fresh and all("resnets" in n or "samplers" in n for n in fresh)


def _saved(tmp_path, net, **parts):
    handle = inject_lora(build_tiny_components(), net, **{"train_unet": True, "train_text_encoder": True, **parts})
    path = tmp_path / "lora.safetensors"
    save_file(lora_state_dict(handle, "float"), path)
    return path


def test_network_weights_rank_mismatch_is_explained(tmp_path):
    path = _saved(tmp_path, NetworkSettings(network_dim=4, network_alpha=4))
    handle = inject_lora(build_tiny_components(), NetworkSettings(network_dim=8, network_alpha=4),
                         train_unet=True, train_text_encoder=True)
    before = {k: v.clone() for k, v in lora_state_dict(handle, "float").items()}
    with pytest.raises(NetworkWeightsMismatch, match=r"network_dim\) to the file's, 4"):
        load_network_weights(handle, path)
    after = lora_state_dict(handle, "float")
    assert all(torch.equal(before[k], after[k]) for k in before)  # all or nothing


def test_network_weights_alpha_mismatch_is_explained(tmp_path):
    path = _saved(tmp_path, NetworkSettings(network_dim=4, network_alpha=4))
    handle = inject_lora(build_tiny_components(), NetworkSettings(network_dim=4, network_alpha=1),
                         train_unet=True, train_text_encoder=True)
    with pytest.raises(NetworkWeightsMismatch, match="alpha 4"):
        load_network_weights(handle, path)


def test_network_weights_with_text_encoder_part_into_unet_only_run(tmp_path):
    path = _saved(tmp_path, NetworkSettings(network_dim=4))
    handle = inject_lora(build_tiny_components(), NetworkSettings(network_dim=4), train_unet=True, train_text_encoder=False)
    with pytest.raises(NetworkWeightsMismatch, match="text encoder is not trained"):
        load_network_weights(handle, path)


def test_network_weights_locon_file_into_standard_run(tmp_path):
    path = _saved(tmp_path, NetworkSettings(network_dim=4, lora_type="LoCon", conv_dim=2))
    handle = inject_lora(build_tiny_components(), NetworkSettings(network_dim=4), train_unet=True, train_text_encoder=True)
    with pytest.raises(NetworkWeightsMismatch, match="LoCon"):
        load_network_weights(handle, path)


def test_network_weights_foreign_format(tmp_path):
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "d.safetensors")
    handle = inject_lora(build_tiny_components(), NetworkSettings(network_dim=4), train_unet=True, train_text_encoder=True)
    with pytest.raises(NetworkWeightsMismatch, match="not a Kohya-format"):
        load_network_weights(handle, tmp_path / "d.safetensors")
