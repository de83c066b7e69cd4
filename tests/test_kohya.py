"""Kohya GUI config import/export: every fixture file, old keys, loose values, the report, the round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loratrainer.config import ConfigError, TrainingConfig, get_value, resolve_key
from loratrainer.config.kohya import DIRECT_KEYS, OURS_ONLY, export_kohya, import_kohya, kohya_split_args, kohya_to_json
from tests.test_kohya_fixtures import IMPORTED, ROOT, effective

# Real Kohya GUI files that import (the kohya_ss copies and two files users saved); those that are refused are
# tested in test_kohya_fixtures.py.
FIXTURES = [ROOT / rel for rel in IMPORTED] + [
    Path(__file__).parent / "fixtures" / "kohya-presets" / name for name in ("saved-locon-AdamW8bit.json", "sd15-EDG_LoraOptiSettings.json")
]
DEFAULTS = TrainingConfig()
KOHYA_NAMES = {"LoRA_type": "lora_type", "xformers": "attention", "sdxl_no_half_vae": "no_half_vae", "sdxl_cache_text_encoder_outputs": "cache_text_encoder_outputs"}  # Kohya keys we spell differently


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _expected(value: Any, default: Any) -> Any:
    """What the file's value means, worked out independently of the importer."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() == "true"
    if isinstance(default, (int, float)) or default is None:
        return float(value)
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float):
        return actual is not None and float(actual) == pytest.approx(expected)
    return actual == expected


def test_fixtures_are_present() -> None:
    assert len(FIXTURES) >= 4


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_every_fixture_imports_with_each_value_as_written_or_reported(path: Path) -> None:
    data = _load(path)
    config, report = import_kohya(data, path.name)
    # Coerced values ("0.0001" -> 0.0001) are compared too: coercion must keep what the file says.
    changed = {k for kind in ("migrated", "defaulted", "unsupported", "ignored") for k in report.keys(kind)}
    compared = 0
    for key, value in data.items():
        if key in DIRECT_KEYS and value not in ("", None) and key not in changed:
            compared += 1
            default = get_value(DEFAULTS, key)
            if key == "optimizer_args":  # quotes and stray commas removed, as the Kohya GUI splits it
                assert get_value(config, key) == " ".join(kohya_split_args(value))
            elif key == "max_resolution":
                assert get_value(config, key) == str(value).replace(" ", "")
            else:
                assert _same(get_value(config, key), _expected(value, default)), key
        elif key in KOHYA_NAMES and not report.mentions(key):
            assert get_value(config, KOHYA_NAMES[key]) == value, key  # same value under our name
        else:
            # A key that was not taken over as written is named in the report: never silently dropped.
            assert report.mentions(key) or (key in DIRECT_KEYS and value in ("", None) and get_value(DEFAULTS, key) in ("", None)), key
    assert compared >= 10  # the comparison is not vacuous
    assert set(report.keys("coerced")) - {"xformers"} <= set(data), "coerced keys come from the file"
    assert any(line.startswith("Read ") for line in report.lines())


EXPECTED_LOUD = {
    "saved-locon-AdamW8bit.json": ["debiased_estimation_loss", "rank_dropout", "module_dropout"],
    "sd15-EDG_LoraOptiSettings.json": [],
    "locon-AdamW8bit-masked_loss-toml.json": [],  # masked_loss imports (tests/test_masked_loss.py), dataset_config too
}


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_values_we_cannot_honour_are_reported_loudly(path: Path) -> None:
    _, report = import_kohya(_load(path), path.name)
    assert set(EXPECTED_LOUD.get(path.name, [])) <= set(report.keys("unsupported"))
    lines = report.lines()
    if report.problems:
        assert lines[1].startswith("MUST BE CHANGED BEFORE TRAINING")
    elif report.unsupported:
        assert lines[1].startswith("NOT SUPPORTED")


@pytest.mark.parametrize(
    "kohya, ours",
    [("Standard", "Standard"), ("LoCon", "LoCon"), ("Kohya LoCon", "LoCon"), ("LyCORIS/LoCon", "LoCon"),
     ("LyCORIS/LoHa", "LoHa"), ("LyCORIS/LoKr", "LoKr")],
)
def test_lora_types_we_train(kohya: str, ours: str) -> None:
    config, report = import_kohya({"LoRA_type": kohya})
    assert config.network.lora_type == ours
    assert "LoRA_type" not in report.keys("unsupported")


@pytest.mark.parametrize(
    "document, attention",
    [
        ({"xformers": True}, "xformers"),
        ({"xformers": False}, "none"),
        ({"xformers": "xformers"}, "xformers"),
        ({"xformers": "sdpa"}, "sdpa"),
        ({"xformers": "none"}, "none"),
        ({"xformers": False, "mem_eff_attn": True}, "sdpa"),
        ({"xformers": True, "mem_eff_attn": False}, "xformers"),
        ({"LoRA_type": "Standard"}, DEFAULTS.precision.attention),
        ({"xformers": ""}, "none"),  # neither --xformers nor --sdpa: plain attention
    ],
)
def test_attention_migration(document: dict, attention: str) -> None:
    assert import_kohya(document)[0].precision.attention == attention


@pytest.mark.parametrize(
    "document, path, value, migrated_key",
    [
        ({"use_8bit_adam": True}, "optimizer", "AdamW8bit", "use_8bit_adam"),
        ({"use_8bit_adam": False}, "optimizer", "AdamW", "use_8bit_adam"),
        ({"use_8bit_adam": False, "optimizer": "Lion"}, "optimizer", "Lion", "use_8bit_adam"),
        ({"lora_network_weights": "/x/old.safetensors"}, "network_weights", "/x/old.safetensors", "lora_network_weights"),
        ({"max_train_epochs": 7, "epoch": 2}, "epoch", 7, "max_train_epochs"),
        ({"max_train_epochs": "12"}, "epoch", 12, "max_train_epochs"),
        ({"noise_offset_type": "Multires", "noise_offset": 0.1, "multires_noise_iterations": 6}, "noise_offset", 0, "noise_offset"),
        ({"noise_offset_type": "Original", "noise_offset": 0.1, "multires_noise_iterations": 6}, "multires_noise_iterations", 0, "multires_noise_iterations"),
    ],
)
def test_old_keys_are_migrated_and_reported(document: dict, path: str, value: Any, migrated_key: str) -> None:
    config, report = import_kohya(document)
    assert get_value(config, path) == value
    assert migrated_key in report.keys("migrated")


def test_max_train_epochs_empty_or_zero_keeps_epoch() -> None:
    for empty in ("", 0, None):
        config, report = import_kohya({"max_train_epochs": empty, "epoch": 4})
        assert config.training.epoch == 4 and report.mentions("max_train_epochs")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("learning_rate", "0.0001", 1e-4),
        ("learning_rate", "1e-4", 1e-4),
        ("seed", "1234", 1234),
        ("network_dim", 64.0, 64),
        ("train_batch_size", "2", 2),
        ("bucket_reso_steps", "64.0", 64),
        ("max_token_length", "150", 150),
        ("shuffle_caption", "True", True),
        ("flip_aug", 1, True),
        ("gpu_ids", 0, "0"),
    ],
)
def test_loose_values_are_coerced_and_reported(key: str, value: Any, expected: Any) -> None:
    config, report = import_kohya({key: value})
    assert get_value(config, key) == expected
    assert report.keys("coerced") == [key]


@pytest.mark.parametrize("key", ["optimizer", "lr_scheduler", "lr_scheduler_num_cycles", "caption_extension", "seed", "network_dim"])
def test_null_means_not_set(key: str) -> None:
    """null: the Kohya GUI keeps its on-screen value (open_configuration); we use our default and say so."""
    config, report = import_kohya({"LoRA_type": "Standard", "optimizer": "AdamW", key: None})
    # a null optimizer too: update_my_data's setdefault leaves it, so the on-screen AdamW8bit (ours too) stays
    assert get_value(config, key) == get_value(DEFAULTS, key)
    assert key in report.keys("defaulted")


@pytest.mark.parametrize(
    "key, value",
    [
        ("epoch", -1),
        ("learning_rate", "abc"),
        ("network_dim", "abc"),
        ("network_dim", 1.5),
        ("seed", "x"),
        ("max_train_epochs", "abc"),
        ("xformers", "maybe"),
        ("shuffle_caption", "perhaps"),
        ("lr_scheduler", "no_such_schedule"),
        ("max_resolution", "huge"),
    ],
)
def test_unparseable_or_out_of_range_values_are_rejected_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"old\.json: {key}: .*{value!r}".replace("(", r"\(")):
        import_kohya({key: value, "network_dim": 8} if key != "network_dim" else {key: value}, "old.json")


def test_reliability_row_15_older_preset() -> None:
    """Numeric strings coerced, missing keys default, unknown keys listed; bad values are errors, never 0."""
    config, report = import_kohya({"learning_rate": "1e-4", "lr": "abc", "colour_boost": 3}, "old.json")
    assert config.optimizer.learning_rate == 1e-4 and "learning_rate" in report.keys("coerced")
    assert config.training.epoch == DEFAULTS.training.epoch and "epoch" in report.missing
    assert {"lr", "colour_boost"} <= set(report.keys("unsupported"))
    with pytest.raises(ConfigError, match="epoch"):
        import_kohya({"learning_rate": "1e-4", "epoch": -1})


@pytest.mark.parametrize(
    "key, value, kind",
    [
        ("sdxl_cache_text_encoder_outputs", True, "migrated"),  # kept; applies when the model is SDXL
        ("t5xxl", "/m/t5.safetensors", "ignored"),
        ("flux1_checkbox", False, "ignored"),
        ("sd3_text_encoder_batch_size", 1, "ignored"),
        ("sdxl", False, "ignored"),
        ("v2", False, "ignored"),
        ("discrete_flow_shift", 3.0, "ignored"),
        ("train_blocks", "all", "ignored"),
        ("stop_text_encoder_training", 30, "ignored"),  # the Kohya GUI ignores it at any value
        ("use_wandb", True, "unsupported"),
        ("additional_parameters", "--foo 1", "unsupported"),
        ("additional_parameters", "", "ignored"),
        ("rank_dropout", 0.1, "unsupported"),
        ("rank_dropout", 0, "ignored"),
        ("save_model_as_typo", "x", "unsupported"),
        ("save_model_as", "ckpt", "unsupported"),
        ("lr_scheduler_args", "T_max=100", "unsupported"),
        ("lr_scheduler_args", "", "ignored"),
    ],
)
def test_keys_we_do_not_use_are_classified(key: str, value: Any, kind: str) -> None:
    _, report = import_kohya({"LoRA_type": "Standard", key: value})
    assert key in report.keys(kind)


def test_folder_name_captions_are_kept_and_explained() -> None:
    config, report = import_kohya({"caption_extension": ".none-use-foldername"})
    assert config.dataset.caption_extension == ".none-use-foldername" and "caption_extension" in report.keys("migrated")


def test_secrets_never_appear_in_the_report() -> None:
    _, report = import_kohya({"LoRA_type": "Standard", "huggingface_token": "hf_SECRET", "wandb_api_key": "SECRET2"})
    assert "SECRET" not in "\n".join(report.lines())


def test_missing_max_train_steps_is_explained() -> None:
    _, report = import_kohya({"epoch": 3})
    assert any("1600" in m for m in report.missing)


# -- export -------------------------------------------------------------------------------------------------


def test_export_is_flat_sorted_indent_2_with_kohya_names() -> None:
    config = TrainingConfig.model_validate({"network": {"lora_type": "LoCon"}, "precision": {"attention": "sdpa"}})
    data, _ = export_kohya(config)
    text = kohya_to_json(data)
    assert list(json.loads(text)) == sorted(data)
    assert text.startswith('{\n  "')
    assert all(not isinstance(v, dict) for v in data.values())
    assert data["LoRA_type"] == "Kohya LoCon" and data["xformers"] == "sdpa" and data["sdxl"] is False
    assert not (set(data) & OURS_ONLY) and "lora_type" not in data and "attention" not in data


def test_export_reports_settings_kohya_cannot_express() -> None:
    config = TrainingConfig.model_validate({"dataset": {"undersized_images": "refuse"}})
    _, report = export_kohya(config)
    assert report.keys("unsupported") == ["undersized_images"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_kohya_to_ours_to_kohya_keeps_supported_values(path: Path) -> None:
    data = _load(path)
    config, report = import_kohya(data)
    exported, _ = export_kohya(config)
    for key, value in data.items():
        if key in DIRECT_KEYS and key not in OURS_ONLY and value not in ("", None) and not report.mentions(key) and key in exported:
            if key == "max_resolution":
                assert exported[key] == value.replace(" ", "")
            elif key == "optimizer_args":
                assert exported[key] == " ".join(kohya_split_args(value))
            else:
                assert _same(exported[key], _expected(value, get_value(DEFAULTS, key))), key
    if data.get("LoRA_type") in ("Standard", "Kohya LoCon"):
        assert exported["LoRA_type"] == data["LoRA_type"]
    again, again_report = import_kohya(json.loads(kohya_to_json(exported)))
    assert effective(again) == effective(config)
    assert again_report.unsupported == []


def test_every_direct_key_is_a_real_setting() -> None:
    for key in DIRECT_KEYS:
        resolve_key(key)


@pytest.mark.parametrize(
    "offset, iterations, kohya_type, loud",
    [(0.0, 0, "Original", False), (0.05, 0, "Original", False), (0.0, 6, "Multires", False), (0.05, 6, "Multires", True)],
)
def test_export_sets_noise_offset_type_so_kohya_uses_the_noise_settings(offset, iterations, kohya_type, loud) -> None:
    """Kohya's GUI passes multires noise only when noise_offset_type is Multires (its default is Original)."""
    config = TrainingConfig.model_validate({"noise": {"noise_offset": offset, "multires_noise_iterations": iterations}})
    data, report = export_kohya(config)
    assert data["noise_offset_type"] == kohya_type
    assert ("noise_offset" in report.keys("unsupported")) == loud
    again, _ = import_kohya(json.loads(kohya_to_json(data)))
    assert again.noise.multires_noise_iterations == iterations
    assert again.noise.noise_offset == (0.0 if loud else offset)  # what Kohya itself would train with




def test_the_missing_list_names_exactly_the_settings_the_file_lacks() -> None:
    _, report = import_kohya({"LoRA_type": "Standard", "learning_rate": 5e-4, "epoch": 3})
    assert "learning_rate" not in report.missing and "epoch" not in report.missing and "network_dim" in report.missing
    _, report = import_kohya({"LoRA_type": "Standard", "epoch": 3})
    assert "learning_rate" in report.missing
    assert "unet_lr" not in report.missing and "unet_lr" in report.keys("defaulted")  # said louder: it means learning_rate


def test_multi_machine_settings_travel_in_kohyas_extra_accelerate_arguments() -> None:
    # the Kohya GUI has fields for num_processes/num_machines/multi_gpu/gpu_ids/main_process_port only; machine
    # rank, main process IP and rendezvous backend go in "Extra accelerate launch arguments" (kohya_gui/class_accelerate_launch.py)
    data = {"num_processes": 4, "num_machines": 2, "multi_gpu": True, "gpu_ids": "0,1", "main_process_port": 29600,
            "extra_accelerate_launch_args": "--machine_rank 1 --main_process_ip=192.168.1.10 --rdzv_backend c10d --same_network"}
    config, report = import_kohya(data)
    la = config.launch
    assert (la.num_processes, la.num_machines, la.multi_gpu, la.gpu_ids, la.main_process_port) == (4, 2, True, "0,1", 29600)
    assert (la.machine_rank, la.main_process_ip, la.rdzv_backend) == (1, "192.168.1.10", "c10d")
    assert any("--machine_rank 1 -> machine_rank" in str(i) for i in report.migrated)
    assert report.keys("unsupported") == ["extra_accelerate_launch_args"] and "--same_network" in str(report.unsupported[0])
    out, _ = export_kohya(config)
    assert out["extra_accelerate_launch_args"] == "--machine_rank 1 --main_process_ip 192.168.1.10 --rdzv_backend c10d"
    assert (out["num_processes"], out["num_machines"], out["multi_gpu"], out["gpu_ids"], out["main_process_port"]) == (4, 2, True, "0,1", 29600)
    assert not {"machine_rank", "main_process_ip", "rdzv_backend"} & set(out)  # not Kohya keys
    again, _ = import_kohya(out)
    assert again.launch == config.launch
    single, _ = export_kohya(import_kohya({"num_processes": 1})[0])
    assert single["extra_accelerate_launch_args"] == ""
