"""The family follows the model, never its file name (issue 21): the launcher reads it from a safetensors header
(model.families.detect_family on the real SDXL/SD1.5 key names) or a diffusers folder's unet/config.json and
model_index.json, fills in model.model_family for the run, refuses a config whose Model family says another
family in one sentence naming the setting as labelled, and applies that family's bucket rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loratrainer.config import TrainingConfig, with_values
from loratrainer.data.check import check_dataset
from loratrainer.gui.i18n import Translator
from loratrainer.launch import input_checks, start as launch
from tests.datasets import make_dataset
from tests.tiny_sd import save_tiny_single_file


def sdxl_header_file(path: Path) -> Path:
    """The original SDXL single-file layout's telling keys (sd-scripts library/sdxl_model_util.py): the UNet's
    label_emb (size conditioning), conditioner.embedders.0 (CLIP ViT-L) and .1 (OpenCLIP bigG, fused in_proj)."""
    save_file({
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 16),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(16, 8),
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(24, 8),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
    }, str(path))
    return path


def sdxl_folder(folder: Path) -> Path:
    """A diffusers SDXL folder as StableDiffusionXLPipeline.save_pretrained lays it out (the configs are what is read)."""
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "cross_attention_dim": 2048, "addition_embed_type": "text_time"}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    return {
        # the names lie on purpose: the family comes from the weights
        "sdxl": sdxl_header_file(root / "sd15-anime-v3.safetensors"),
        "sd15": save_tiny_single_file(root / "ponyDiffusionV6XL.safetensors"),
        "sdxl_folder": sdxl_folder(root / "sdxl-diffusers"),
    }


def test_the_family_is_read_from_the_weights_not_the_name(models):
    assert input_checks.model_family_of(str(models["sdxl"])) == "sdxl"
    assert input_checks.model_family_of(str(models["sd15"])) == "sd15"
    assert input_checks.model_family_of(str(models["sdxl_folder"])) == "sdxl"
    assert input_checks.model_family_of("stabilityai/stable-diffusion-xl-base-1.0") is None  # a hub id: the trainer reads it


def test_sdxl_models_pass_the_model_checks(models):
    for key in ("sdxl", "sdxl_folder"):
        config = with_values(TrainingConfig(), {"model.pretrained_model_name_or_path": str(models[key])})
        assert input_checks.check_model_files(config) is None, key


def test_auto_becomes_the_models_family(models):
    config, problem = input_checks.resolve_model_family(with_values(TrainingConfig(), {"model.pretrained_model_name_or_path": str(models["sdxl"])}))
    assert problem is None and config.model.model_family == "sdxl"


@pytest.mark.parametrize("model, said, found", [("sdxl", "sd15", "SDXL"), ("sd15", "sdxl", "SD1.5"), ("sdxl_folder", "sd15", "SDXL")])
def test_a_config_that_names_another_family_is_refused_in_one_sentence(models, model, said, found):
    config = with_values(TrainingConfig(), {"model.pretrained_model_name_or_path": str(models[model]), "model.model_family": said})
    _, problem = input_checks.resolve_model_family(config)
    assert problem is not None and problem.code == "inputs.family_mismatch"
    text = str(problem)  # the CLI names the setting by its path, the page by its label
    assert text.startswith("model.model_family is ") and f"is {found} model" in text and "\n" not in text
    assert Translator("en").message(problem).startswith("Model family is ")
    korean = Translator("ko").message(problem)
    assert any("\uac00" <= c <= "\ud7a3" for c in korean) and "auto" in korean


def test_preflight_refuses_the_mismatch_before_any_folder_is_made(tmp_path, models):
    data = make_dataset(tmp_path / "img", {"2_thing": 2})
    config = with_values(TrainingConfig(), {"train_data_dir": str(data), "output_dir": str(tmp_path / "out"), "optimizer": "AdamW",
                                            "pretrained_model_name_or_path": str(models["sdxl"]), "model_family": "sd15",
                                            "max_resolution": "64,64", "min_bucket_reso": 64})
    with pytest.raises(launch.LaunchRefused) as info:
        launch.preflight(config)
    assert "model.model_family is SD1.5" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family, steps, refused", [("sdxl", 32, False), ("sdxl", 16, True), ("sd15", 32, True), ("auto", 64, False)])
def test_the_bucket_step_rule_follows_the_family(tmp_path, family, steps, refused):
    # sd-scripts: train_network.py verify_bucket_reso_steps(64), sdxl_train_network.py verify_bucket_reso_steps(32)
    data = make_dataset(tmp_path / "img", {"2_thing": 1})
    config = with_values(TrainingConfig(), {"train_data_dir": str(data), "model_family": family, "bucket_reso_steps": steps,
                                            "max_resolution": "64,64", "min_bucket_reso": 64})
    errors = [p for p in check_dataset(config).problems if p.severity == "error"]
    assert any("bucket_reso_steps" in str(p.message) for p in errors) == refused


@pytest.mark.parametrize("model, code", [("sdxl", 0), ("sd15", 1)])
def test_loratrainer_check_applies_the_bucket_rule_of_the_models_family(tmp_path, models, model, code, capsys):
    from loratrainer.cli import main

    data = make_dataset(tmp_path / "img", {"2_thing": 1})
    argv = ["check", str(data), "--set", f"pretrained_model_name_or_path={models[model]}", "--set", "bucket_reso_steps=32",
            "--set", "max_resolution=64,64", "--set", "min_bucket_reso=64"]
    assert main(argv) == code
    assert ("multiple of 64" in capsys.readouterr().out) == (code != 0)  # exit 1: the dataset check refused
