"""Full-size SD1.5 on the meta device (no weights, no memory): the LoRA module set we inject and save is the one
sd-scripts' own networks/lora.py builds for SD1.5, name for name, with the same ranks (Standard and LoCon), and
LoHa/LoKr adapt that same set (the set LyCORIS's lycoris.kohya builds inside the UNet's blocks, with its ranks).

The expected names come from running sd-scripts itself (bench/sd_scripts_sd15_modules.py, in a separate venv with
sd-scripts' pinned transformers/diffusers and lycoris-lora) on its library/original_unet.UNet2DConditionModel and
the CLIPTextModel that library/model_util.py builds for SD1.5; the fixture records the sd-scripts commit.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from loratrainer.config import NetworkSettings
from loratrainer.model.assets import SD15_CONFIG_DIR
from loratrainer.model.kohya_format import load_network_weights, lora_state_dict
from loratrainer.model.lora import inject_lora
from tests.full_size_modules import assert_modules_equal_sd_scripts, injector
from tests.tiny_sd import build_tiny_components

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "sd_scripts_sd15_lora_modules.json").read_text())
# LyCORIS's "full" preset also names modules outside the UNet's blocks (lycoris/config.py FULL_UNET_NAMES); on
# SD1.5 these four. Not in LoCon's set; we train LoCon's set for LoHa/LoKr (docs/lycoris.md).
LYCORIS_FULL_NAMES = {"lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1",
                      "lora_unet_time_embedding_linear_2"}


def full_sd15_on_meta():
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    return SimpleNamespace(unet=unet, text_encoder=te)


def _unet(names):
    return [n for n in names if n.startswith("lora_unet_")]


def test_fixture_is_sd_scripts_own_output():
    assert FIXTURE["commit"] == "48d368fa557731ad0488c07304dfeba8c07910eb"
    standard, locon = FIXTURE["modules"]["Standard"], FIXTURE["modules"]["LoCon"]
    assert (len(standard), len(_unet(standard))) == (264, 192)  # 72 text-encoder linears + 192 UNet modules
    assert (len(locon), len(_unet(locon))) == (350, 278)
    extra = set(locon) - set(standard)  # 50 3x3 convs at conv_dim, 22 time_emb_proj + 14 conv_shortcut at network_dim
    assert sum(n.endswith("time_emb_proj") for n in extra) == 22 and sum(n.endswith("conv_shortcut") for n in extra) == 14
    assert sorted({locon[n] for n in extra if n.endswith(("time_emb_proj", "conv_shortcut"))}) == [FIXTURE["network_dim"]]
    assert sum(locon[n] == FIXTURE["conv_dim"] for n in extra) == 50
    # LyCORIS 4.1.3's unchanged "full" preset cannot build SD1.5 at all; the preset before its Anima class gives
    # LoCon's set plus the four model-level names
    assert "duplicated lora name" in FIXTURE["lycoris_full_preset_error"]
    for algo in ("LoHa", "LoKr"):
        assert set(FIXTURE["modules"][algo]) - set(locon) == LYCORIS_FULL_NAMES
        assert set(locon) <= set(FIXTURE["modules"][algo])


@pytest.fixture(scope="module")
def handles():
    """One full-size injection per LoRA type, shared by the tests of this module."""
    return injector(full_sd15_on_meta, FIXTURE)


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon"])
def test_full_size_sd15_module_set_and_ranks_equal_sd_scripts(lora_type, handles):
    assert_modules_equal_sd_scripts(handles(lora_type), FIXTURE["modules"][lora_type])


@pytest.mark.parametrize("lora_type", ["LoHa", "LoKr"])
def test_full_size_sd15_lycoris_module_set_is_locons_with_lycoris_ranks(lora_type, handles):
    """LoHa/LoKr: exactly sd-scripts' LoCon set, each module with the rank LyCORIS's lycoris.kohya gives it."""
    handle = handles(lora_type)
    ours = {name: info.rank for name, info in handle.modules.items()}
    assert set(ours) == set(FIXTURE["modules"]["LoCon"])
    lycoris = {n: r for n, r in FIXTURE["modules"][lora_type].items() if n not in LYCORIS_FULL_NAMES}
    assert ours == lycoris


@pytest.mark.parametrize("lora_type", ["LoCon", "LoHa"])
def test_an_older_file_without_the_resnet_linears_continues_with_those_modules_fresh(tmp_path, lora_type):
    """A LoCon/LoHa file written before the resnets' time_emb_proj and conv_shortcut were adapted (242 UNet modules
    at full size) still continues: its modules load, the new ones start fresh and are reported."""
    net = NetworkSettings(lora_type=lora_type, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1)
    first = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    with torch.no_grad():
        for p in first.unet_parameters() + first.text_encoder_parameters():
            p.normal_(std=0.1)
    saved = lora_state_dict(first, "float")
    new = {n for n in first.modules if n.endswith(("time_emb_proj", "conv_shortcut"))}
    assert new and any(n.endswith("conv_shortcut") for n in new)
    old = {k: v for k, v in saved.items() if k.split(".", 1)[0] not in new}
    save_file(old, tmp_path / "old.safetensors")
    second = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    fresh_before = lora_state_dict(second, "float")
    assert set(load_network_weights(second, tmp_path / "old.safetensors")) == new
    loaded = lora_state_dict(second, "float")
    assert all(torch.equal(loaded[k], v) for k, v in old.items())
    assert all(torch.equal(loaded[k], fresh_before[k]) for k in loaded if k.split(".", 1)[0] in new)
