"""Model files, output names and the optimizer, checked before launch (docs/reliability.md, "Models" and "Before
a run starts"): a tokenizer saved by current transformers (tokenizer.json only) is the one used, a wrong VAE or
base model is refused by name before the trainer starts, a file name the file system cannot hold is refused before
an epoch is wasted, and an optimizer path outside the optimizer packages is never imported."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from loratrainer.config import ModelSettings, TrainingConfig, with_values
from loratrainer.gui.i18n import Translator
from loratrainer.model.loading import TokenizerMismatch, load_sd15
from loratrainer.launch import input_checks, start as launch
from tests.datasets import make_dataset
from tests.tiny_sd import TEXT_CONFIG, TOKENIZER_DIR, build_tiny_components, save_tiny_single_file

SMALL_VOCAB = 514  # 256 byte symbols, the same with </w>, start and end of text


def small_tokenizer(folder: Path) -> CLIPTokenizer:
    """A real CLIP BPE tokenizer with a 514-token vocabulary (no merges), unlike SD1.5's 49408."""
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = 77
    return tokenizer


def save_model(folder: Path, tokenizer: CLIPTokenizer, vocab_size: int) -> Path:
    """A tiny SD1.5-layout diffusers folder as StableDiffusionPipeline.save_pretrained writes it today."""
    tiny = build_tiny_components()
    text_encoder = CLIPTextModel(CLIPTextConfig(**{**TEXT_CONFIG, "vocab_size": vocab_size})).eval()
    replace(tiny, tokenizer=tokenizer, text_encoder=text_encoder).pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def test_a_tokenizer_folder_with_only_tokenizer_json_is_used_and_fits(tmp_path):
    model = save_model(tmp_path / "model", small_tokenizer(tmp_path / "tok-src"), SMALL_VOCAB)
    assert sorted(p.name for p in (model / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    parts = load_sd15(ModelSettings(pretrained_model_name_or_path=str(model)))
    assert len(parts.tokenizer) == SMALL_VOCAB  # the folder's own, not the shipped 49408-token one
    ids = parts.tokenizer(["a photo of a dog, zebra"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert int(ids.max()) < SMALL_VOCAB
    with torch.no_grad():
        parts.text_encoder(ids)  # what step 1 does: before, IndexError: index out of range in self
    assert input_checks.check_model_files(_with_model(model)) is None


def test_a_tokenizer_that_does_not_fit_the_text_encoder_is_refused_before_launch_and_at_load(tmp_path):
    shipped = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)  # 49408 tokens, saved as tokenizer.json only
    model = save_model(tmp_path / "model", shipped, SMALL_VOCAB)
    problem = input_checks.check_model_files(_with_model(model))
    assert problem is not None and problem.code == "inputs.tokenizer_mismatch"
    assert "49408 tokens" in str(problem) and "only 514" in str(problem)
    assert "기본 모델" in Translator("ko").message(problem)  # the setting as the Korean page labels it
    with pytest.raises(TokenizerMismatch, match="49408 tokens"):
        load_sd15(ModelSettings(pretrained_model_name_or_path=str(model)))


def _with_model(model: Path, **values) -> TrainingConfig:
    return with_values(TrainingConfig(), {"model.pretrained_model_name_or_path": str(model), **values})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    single = save_tiny_single_file(root / "tiny.safetensors")
    lora = root / "my_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(lora))
    text = root / "notes.safetensors"
    text.write_text("this is not a VAE\n" * 20)
    ckpt = save_tiny_single_file(root / "tiny.ckpt")
    return {"single": single, "lora": lora, "text": text, "ckpt": ckpt, "root": root}


@pytest.mark.parametrize("values,code,words", [
    ({"model.vae": "{text}"}, "inputs.not_a_model", "VAE: {text} is not a model file"),
    ({"model.vae": "{root}/missing.safetensors"}, "inputs.missing", "does not exist"),
    ({"model.vae": "{lora}"}, "inputs.wrong_family", "is a LoRA file, not a VAE"),
    ({"model.pretrained_model_name_or_path": "{lora}"}, "inputs.wrong_family", "is a LoRA file, not an SD1.5 or SDXL model"),
    ({"model.pretrained_model_name_or_path": "{root}/nowhere.ckpt"}, "inputs.missing", "does not exist"),
    ({"model.pretrained_model_name_or_path": "{root}"}, "inputs.not_diffusers", "not a diffusers model"),
    ({"network.network_weights": "{single}"}, "inputs.wrong_family", "is an SD1.5 model, not a LoRA file"),
    ({"network.network_weights": "{root}/gone.safetensors"}, "inputs.missing", "does not exist"),
])
def test_wrong_model_files_are_refused_before_launch(files, values, code, words):
    values = {k: v.format(**files) for k, v in values.items()}
    config = with_values(TrainingConfig(), {"model.pretrained_model_name_or_path": str(files["single"]), **values})
    problem = input_checks.check_model_files(config)
    assert problem is not None and problem.code == code, problem
    assert words.format(**files).split(": ")[-1] in str(problem)
    assert any("\uac00" <= c <= "\ud7a3" for c in Translator("ko").message(problem))


def test_right_model_files_pass(files):
    config = with_values(TrainingConfig(), {"model.pretrained_model_name_or_path": str(files["single"]),
                                            "model.vae": str(files["single"]), "network.network_weights": str(files["lora"])})
    assert input_checks.check_model_files(config) is None
    assert input_checks.check_model_files(with_values(config, {"model.pretrained_model_name_or_path": str(files["ckpt"])})) is None
    assert input_checks.check_model_files(TrainingConfig()) is None  # a hub id is checked when downloaded


def test_preflight_refuses_a_text_file_as_vae_with_a_korean_sentence(tmp_path, files):
    data = make_dataset(tmp_path / "image", {"2_thing": 2})
    config = with_values(TrainingConfig(), {"train_data_dir": str(data), "output_dir": str(tmp_path / "out"),
                                            "max_resolution": "64,64", "min_bucket_reso": 64, "optimizer": "AdamW",
                                            "pretrained_model_name_or_path": str(files["single"]), "vae": str(files["text"])})
    with pytest.raises(launch.LaunchRefused) as info:
        launch.preflight(config)
    assert "is not a model file" in str(info.value)
    assert "모델 파일이 아닙니다" in Translator("ko").error_text(info.value)


def test_the_default_base_model_is_the_maintained_hub_copy():
    assert TrainingConfig().model.pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"


# -- output names ---------------------------------------------------------------------------------------------


def _named(tmp_path: Path, name: str) -> TrainingConfig:
    (tmp_path / "out").mkdir(exist_ok=True)
    return with_values(TrainingConfig(), {"output_dir": str(tmp_path / "out"), "output_name": name})


@pytest.mark.parametrize("chars", [100, 76])
def test_a_korean_output_name_too_long_for_the_files_it_will_write_is_refused(tmp_path, chars):
    name = "가" * chars
    problem = input_checks.check_output_name(_named(tmp_path, name))
    assert problem is not None and problem.code == "inputs.name_too_long"
    assert "bytes" in str(problem) and str(tmp_path / "out") in str(problem)
    assert "출력 이름" in Translator("ko").message(problem)
    # what the check predicts is what the file system does: the save's temporary file cannot be created
    with pytest.raises(OSError) as info:
        open(tmp_path / "out" / f".{name}-step00000001.safetensors.abcdefgh.partial", "wb")
    assert info.value.errno == errno.ENAMETOOLONG


def test_the_longest_accepted_name_can_write_all_its_files(tmp_path):
    fits = max(n for n in range(1, 90) if input_checks.check_output_name(_named(tmp_path, "가" * n)) is None)
    name = "가" * fits + "_99"
    for file in (f".{name}-interrupted-99.safetensors.abcdefgh.partial", f".{name}-step00000001.safetensors.abcdefgh.partial"):
        (tmp_path / "out" / file).write_bytes(b"")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / f"{'가' * fits}_20260101-000000-99").mkdir()


@pytest.mark.parametrize("name,code", [
    ("CON", "inputs.name_reserved"), ("nul", "inputs.name_reserved"), ("com1.v2", "inputs.name_reserved"),
    ("LPT9", "inputs.name_reserved"), ("my lora.", "inputs.name_trailing"), ("my lora ", "inputs.name_trailing"),
    ("my\tlora", "inputs.name_control"), ("my\nlora", "inputs.name_control"),
])
def test_names_windows_cannot_hold_are_refused(tmp_path, name, code):
    problem = input_checks.check_output_name(_named(tmp_path, name))
    assert problem is not None and problem.code == code
    assert "출력 이름" in Translator("ko").message(problem)


@pytest.mark.parametrize("name", ["console", "my lora", "강아지_v2", "CONFIG", "a.b"])
def test_ordinary_names_pass(tmp_path, name):
    assert input_checks.check_output_name(_named(tmp_path, name)) is None


# -- the optimizer --------------------------------------------------------------------------------------------


def test_an_optimizer_path_outside_the_optimizer_packages_is_never_imported(monkeypatch, tmp_path):
    from loratrainer.train.optimizers import OptimizerUnavailable, optimizer_spec

    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    config = with_values(TrainingConfig(), {"optimizer": "os.system"})
    problem = input_checks.check_optimizer_source(config)
    assert problem is not None and "os.system is not from a known optimizer package" in str(problem)
    assert "옵티마이저" in Translator("ko").message(problem)
    with pytest.raises(OptimizerUnavailable, match="not from a known optimizer package"):
        optimizer_spec("os.system")
    with pytest.raises(OptimizerUnavailable):
        optimizer_spec("subprocess.Popen")
    assert called == []
    assert optimizer_spec("torch.optim.AdamW")[0] is torch.optim.AdamW  # the optimizer packages still work
    assert input_checks.check_optimizer_source(with_values(config, {"optimizer": "torch.optim.RAdam"})) is None
