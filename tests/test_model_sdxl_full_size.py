"""Full-size SDXL on the meta device (no weights, no memory): the LoRA module set we inject and save is the one
sd-scripts' own networks/lora.py builds for SDXL, name for name, with the same ranks (Standard and LoCon).

LoHa and LoKr: the module set LyCORIS's lycoris.kohya builds on the same models (names; ranks are LyCORIS's own).

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

from loratrainer.model.assets import SDXL_CONFIG_DIR
from loratrainer.model.kohya_format import lora_state_dict
from tests.full_size_modules import assert_modules_equal_sd_scripts, injector

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
    assert set(FIXTURE["modules"]["LoHa"]) == set(FIXTURE["modules"]["LoKr"]) == set(locon)  # LyCORIS: LoCon's set


@pytest.mark.parametrize("lora_type", ["LoHa", "LoKr"])
def test_full_size_sdxl_lycoris_module_set_equals_lycoris_kohya(lora_type, handles):
    """sd-scripts with --network_module lycoris.kohya (LyCORIS's own create_network, algo loha / lokr)."""
    assert set(handles(lora_type).modules) == set(FIXTURE["modules"][lora_type])


@pytest.fixture(scope="module")
def handles():
    """One full-size injection per LoRA type, shared by the tests of this module."""
    return injector(full_sdxl_on_meta, FIXTURE)


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon"])
def test_full_size_sdxl_module_set_and_ranks_equal_sd_scripts(lora_type, handles):
    assert_modules_equal_sd_scripts(handles(lora_type), FIXTURE["modules"][lora_type])


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
