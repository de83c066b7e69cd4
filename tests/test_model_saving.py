"""Saving: the Kohya file other tools load (diffusers checked for real), its metadata and hashes, safety rules."""

import hashlib
import json
import re
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

from loratrainer.config import TrainingConfig
from loratrainer.model.errors import NonFiniteLoraError, OutputExists
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.lora import inject_lora
from loratrainer.model.metadata import DatasetInfo, DirInfo, ModelInfo, TrainingProgress, build_metadata
from loratrainer.model.saving import save_diffusers_lora, save_lora
from tests.tiny_sd import IMAGE_SIZE, build_tiny_components

DATASET = DatasetInfo(
    num_train_images=40,
    dataset_dirs={"10_cat": DirInfo(n_repeats=10, img_count=4)},
    tag_frequency={"10_cat": {"cat": 4, "sitting": 2, "日本": 1}},
    bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 40}}, "mean_img_ar_error": 0.0},
    num_batches_per_epoch=40,
)


def metadata(config=None, **kw):
    config = config or TrainingConfig()
    progress = TrainingProgress(epoch=1, step=40, num_epochs=2, max_train_steps=80, seed=1234,
                                started_at=1_700_000_000.0, finished_at=1_700_000_100.0)
    return build_metadata(config, progress, DATASET, ModelInfo(name="v1-5-pruned.safetensors", hash="e1441589"), **kw)


def trained_handle(config=None, seed=1, **parts):
    config = config or TrainingConfig()
    handle = inject_lora(build_tiny_components(), config.network,
                         **{"train_unet": True, "train_text_encoder": True, **parts})
    torch.manual_seed(seed)
    with torch.no_grad():  # a LoRA that does something (fresh ones are zero)
        for p in handle.unet_parameters() + handle.text_encoder_parameters():
            p.normal_(std=0.2)
    return handle


def render(pipe):
    return pipe("a photo of a cat", num_inference_steps=2, height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


class _Collect:
    def __init__(self):
        self.records = []

    def __enter__(self):
        import logging

        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = self.records.append
        self.loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
        for lg in self.loggers:
            lg.addHandler(self.handler)
        self.warnings = warnings.catch_warnings(record=True)
        self.caught = self.warnings.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        for lg in self.loggers:
            lg.removeHandler(self.handler)

    def key_problems(self):
        texts = [r.getMessage() for r in self.records] + [str(w.message) for w in self.caught]
        # peft/diffusers report leftover keys as "... unexpected keys ..." / "... missing keys ..."; transformers 5
        # prints a LOAD REPORT table instead, one "| UNEXPECTED |" (or MISSING, MISMATCH) row per key
        return [t for t in texts if re.search(r"(unexpected|missing)[^.]*keys", t, re.IGNORECASE)
                or re.search(r"\|\s*(UNEXPECTED|MISSING|MISMATCH)\s*\|", t)]


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon"])
def test_diffusers_loads_the_kohya_file_fully_and_unloads(tmp_path, lora_type):
    config = TrainingConfig()
    config.network.lora_type = lora_type
    config.network.network_dim, config.network.network_alpha = 4, 2
    config.network.conv_dim, config.network.conv_alpha = 2, 1
    handle = trained_handle(config)
    path = save_lora(tmp_path / "x.safetensors", lora_state_dict(handle, "float"), metadata(config))

    pipe = build_tiny_components().pipeline()
    base = render(pipe)
    with _Collect() as log:
        pipe.load_lora_weights(str(path))
    assert log.key_problems() == []
    # every adapted module arrived with our weights and our scale (alpha / rank)
    for info in handle.modules.values():
        ours = handle.model(info.part).get_submodule(info.path)
        theirs = getattr(pipe, info.part).get_submodule(info.path)
        (name,) = theirs.lora_A.keys()
        assert torch.allclose(theirs.lora_A[name].weight, ours.lora_A["default"].weight), info.kohya_name
        assert torch.allclose(theirs.lora_B[name].weight, ours.lora_B["default"].weight), info.kohya_name
        assert theirs.scaling[name] == pytest.approx(info.alpha / info.rank), info.kohya_name
    adapted = {n for part in ("unet", "text_encoder") for n, m in getattr(pipe, part).named_modules() if hasattr(m, "lora_A")}
    assert len(adapted) == len(handle.modules)
    with_lora = render(pipe)
    assert np.abs(with_lora - base).max() > 1e-3
    pipe.unload_lora_weights()
    np.testing.assert_allclose(render(pipe), base, atol=1e-6)


def test_the_key_check_catches_a_text_encoder_key_diffusers_does_not_use(tmp_path):
    """The check above can fail: one extra lora_te_ module (transformers reports it in its LOAD REPORT table)."""
    state = lora_state_dict(trained_handle(), "float")
    name = next(k for k in state if k.startswith("lora_te_") and k.endswith(".alpha")).removesuffix(".alpha")
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        state["lora_te_text_model_encoder_layers_0_self_attn_extra_proj" + suffix] = state[name + suffix].clone()
    path = save_lora(tmp_path / "extra.safetensors", state, metadata())
    pipe = build_tiny_components().pipeline()
    with _Collect() as log:
        pipe.load_lora_weights(str(path))
    (problem,) = log.key_problems()
    assert "extra" in problem and "UNEXPECTED" in problem


def test_unet_only_file_loads_in_diffusers(tmp_path):
    handle = trained_handle(train_text_encoder=False)
    path = save_lora(tmp_path / "u.safetensors", lora_state_dict(handle), metadata())
    with safe_open(path, "pt") as f:
        assert not any(k.startswith("lora_te_") for k in f.keys())
    pipe = build_tiny_components().pipeline()
    base = render(pipe)
    with _Collect() as log:
        pipe.load_lora_weights(str(path))
    assert log.key_problems() == []
    assert np.abs(render(pipe) - base).max() > 1e-3


def test_diffusers_format_export_gives_the_same_result(tmp_path):
    config = TrainingConfig()
    config.network.network_dim, config.network.network_alpha = 4, 1
    handle = trained_handle(config)
    kohya = save_lora(tmp_path / "k.safetensors", lora_state_dict(handle, "float"), metadata(config))
    folder = save_diffusers_lora(tmp_path / "diffusers", handle)
    a, b = build_tiny_components().pipeline(), build_tiny_components().pipeline()
    a.load_lora_weights(str(kohya))
    b.load_lora_weights(str(folder))
    np.testing.assert_allclose(render(a), render(b), atol=1e-5)


def test_metadata_keys_values_and_json(tmp_path):
    config = TrainingConfig()
    config.network.lora_type = "LoCon"
    config.metadata.metadata_title = "My cat"
    config.metadata.metadata_trigger_phrase = "mycat"
    handle = trained_handle(config)
    path = save_lora(tmp_path / "m.safetensors", lora_state_dict(handle), metadata(config, optimizer_name="torch.optim.AdamW"))
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert sum(k.startswith("ss_") for k in meta) >= 60
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "1.0" and meta["ss_v2"] == "False"
    assert meta["ss_resolution"] == "(512, 512)" and meta["ss_epoch"] == "1" and meta["ss_steps"] == "40"
    assert meta["ss_seed"] == "1234" and meta["ss_sd_model_name"] == "v1-5-pruned.safetensors"
    assert meta["ss_sd_model_hash"] == "e1441589" and meta["ss_optimizer"] == "torch.optim.AdamW"
    assert meta["ss_lr_warmup_steps"] == "8"  # 10 % of 80 steps
    assert float(meta["ss_training_started_at"]) == 1_700_000_000.0
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_cat": {"n_repeats": 10, "img_count": 4}}
    assert json.loads(meta["ss_tag_frequency"]) == DATASET.tag_frequency
    assert json.loads(meta["ss_bucket_info"])["buckets"]["0"]["count"] == 40
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "1", "conv_alpha": "1.0"}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {}
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers" and meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.title"] == "My cat" and meta["modelspec.trigger_phrase"] == "mycat"
    assert meta["modelspec.date"].startswith("2023-11-14")
    assert "modelspec.author" not in meta  # empty fields are left out
    assert meta["ss_session_id"] == metadata(config)["ss_session_id"]  # the same for every file of a run


def test_sshs_hashes_are_computed_as_kohya_does(tmp_path):
    path = save_lora(tmp_path / "h.safetensors", lora_state_dict(trained_handle()), metadata())
    data = path.read_bytes()
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    header = int.from_bytes(data[:8], "little")
    # the tensor payload does not depend on the metadata, so the file's own payload has the stored hash
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + header:]).hexdigest()
    assert len(meta["sshs_legacy_hash"]) == 8
    # user-editable (non ss_) keys must not change the hashes
    other = metadata()
    other["modelspec.title"] = "renamed"
    again = save_lora(tmp_path / "h2.safetensors", lora_state_dict(trained_handle()), other)
    with safe_open(again, "pt") as f:
        meta2 = f.metadata()
    assert (meta2["sshs_model_hash"], meta2["sshs_legacy_hash"]) == (meta["sshs_model_hash"], meta["sshs_legacy_hash"])


def test_non_finite_tensors_are_refused_naming_the_module(tmp_path):
    sd = lora_state_dict(trained_handle(), "float")
    key = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"
    sd[key][0, 0] = float("nan")
    with pytest.raises(NonFiniteLoraError, match="lora_unet_down_blocks_0_attentions_0_proj_in"):
        save_lora(tmp_path / "nan.safetensors", sd, metadata())
    sd[key][0, 0] = float("inf")
    with pytest.raises(NonFiniteLoraError):
        save_lora(tmp_path / "nan.safetensors", sd, metadata())
    assert list(tmp_path.iterdir()) == []


def test_fp16_overflow_is_caught_after_casting(tmp_path):
    handle = trained_handle()
    with torch.no_grad():
        handle.unet_parameters()[0][0].fill_(1e6)  # fine in float32, infinite in fp16
    with pytest.raises(NonFiniteLoraError):
        save_lora(tmp_path / "o.safetensors", lora_state_dict(handle, "fp16"), metadata())


def test_existing_file_is_not_overwritten_silently(tmp_path):
    sd = lora_state_dict(trained_handle(), "float")
    path = save_lora(tmp_path / "o.safetensors", sd, metadata())
    before = path.read_bytes()
    with pytest.raises(OutputExists, match="o.safetensors"):
        save_lora(path, lora_state_dict(trained_handle(seed=2), "float"), metadata())
    assert path.read_bytes() == before
    save_lora(path, lora_state_dict(trained_handle(seed=2), "float"), metadata(), overwrite=True)
    assert path.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["o.safetensors"]  # no temporary files left behind
