"""Full-size SDXL on the meta device (no weights, no memory): the LoRA module set we inject and save is the one
sd-scripts' own networks/lora.py builds for SDXL, name for name, with the same ranks (Standard and LoCon).

The expected names come from running sd-scripts itself (bench/sd_scripts_sdxl_modules.py, in a separate venv with
sd-scripts' pinned transformers/diffusers) on its SdxlUNet2DConditionModel and the two text encoders built as
library/sdxl_model_util.py builds them; the fixture records the sd-scripts commit.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from loratrainer.config import NetworkSettings
from loratrainer.model.assets import SDXL_CONFIG_DIR
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.lora import inject_lora

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "sd_scripts_sdxl_lora_modules.json").read_text())


def full_sdxl_on_meta():
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_CONFIG_DIR, subfolder="unet"))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2"))
    return SimpleNamespace(unet=unet, text_encoder=te1, text_encoder_2=te2, family="sdxl")


def test_fixture_is_sd_scripts_own_output():
    assert FIXTURE["commit"] == "48d368fa557731ad0488c07304dfeba8c07910eb"
    standard, locon = FIXTURE["modules"]["Standard"], FIXTURE["modules"]["LoCon"]
    assert len(standard) == 986 and len(locon) == 1052  # as sd-scripts logs: 264 text-encoder + 722 / 788 U-Net


@pytest.fixture(scope="module")
def handles():
    """One full-size injection per LoRA type, shared by the tests of this module."""
    cache = {}

    def get(lora_type):
        if lora_type not in cache:
            net = NetworkSettings(lora_type=lora_type, network_dim=FIXTURE["network_dim"], network_alpha=1,
                                  conv_dim=FIXTURE["conv_dim"], conv_alpha=1)
            cache[lora_type] = inject_lora(full_sdxl_on_meta(), net, train_unet=True, train_text_encoder=True)
        return cache[lora_type]

    return get


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon"])
def test_full_size_sdxl_module_set_and_ranks_equal_sd_scripts(lora_type, handles):
    handle = handles(lora_type)
    expected = FIXTURE["modules"][lora_type]
    ours = {name: info.rank for name, info in handle.modules.items()}
    assert sorted(set(ours) - set(expected)) == [] and sorted(set(expected) - set(ours)) == []
    assert ours == expected  # the same rank for every module (conv_dim only on 3x3 convolutions)
    saved = lora_state_dict(handle, "fp16")  # meta tensors: names and shapes only
    assert {k.split(".", 1)[0] for k in saved} == set(expected)
    assert len(saved) == 3 * len(expected)  # lora_down, lora_up, alpha per module


def test_diffusers_sdxl_pipeline_loads_a_full_size_locon_file_with_no_key_left(handles):
    """diffusers' own Kohya SDXL converter (StableDiffusionXLPipeline.load_lora_weights) takes every module of a
    full-size LoCon file (a superset of Standard) to the module we trained, on the meta device."""
    from diffusers import StableDiffusionXLPipeline

    from tests.test_model_saving import _Collect

    handle = handles("LoCon")
    file = {k: torch.full(v.shape, 0.01) for k, v in lora_state_dict(handle, "float").items()}  # as saved: real tensors
    m = full_sdxl_on_meta()
    pipe = StableDiffusionXLPipeline(vae=None, text_encoder=m.text_encoder, text_encoder_2=m.text_encoder_2,
                                     tokenizer=None, tokenizer_2=None, unet=m.unet, scheduler=None)
    with _Collect() as log:
        pipe.load_lora_weights(file)
    assert log.key_problems() == []
    adapted = {(part, n) for part in ("unet", "text_encoder", "text_encoder_2")
               for n, module in getattr(pipe, part).named_modules() if hasattr(module, "lora_A")}
    assert adapted == {(info.part, info.path) for info in handle.modules.values()}
    assert len(adapted) == 1052
