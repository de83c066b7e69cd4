"""Each rule of the Kohya import (docs/kohya-compat.md section 3), one test per rule: what the Kohya GUI at HEAD
does with a file is what we do, or we refuse in one sentence naming the key."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from loratrainer.cli import main
from loratrainer.config import TrainingConfig, field_specs, get_value, parse_optimizer_args, with_values
from loratrainer.config.foreign_paths import foreign_kind
from loratrainer.config.kohya import DIRECT_KEYS, EMPTY_VALUES, LORA_TYPES, OURS_ONLY, KohyaRefused, export_kohya, import_kohya, kohya_to_json
from loratrainer.config.kohya_gui_keys import KOHYA_LORA_TAB
from loratrainer.messages import Msg
from tests.datasets import make_dataset

DEFAULTS = TrainingConfig()
LORA = {"LoRA_type": "Standard"}  # what makes a small dict a LoRA file


def refusal(data: dict[str, Any], source: str = "x.json") -> str:
    with pytest.raises(KohyaRefused) as info:
        import_kohya(data, source)
    return str(info.value)


# -- another model family ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, family, key",
    [
        ({"sd3_checkbox": True, **LORA}, "Stable Diffusion 3", "sd3_checkbox"),
        ({"flux1_checkbox": True, **LORA}, "FLUX.1", "flux1_checkbox"),
        ({"v2": True, "v_parameterization": True, **LORA}, "Stable Diffusion 2", "v2"),
        ({"v2": "True", **LORA}, "Stable Diffusion 2", "v2"),
        ({"LoRA_type": "Flux1"}, "FLUX.1", "LoRA_type"),
        ({"LoRA_type": "Flux1 OFT"}, "FLUX.1", "LoRA_type"),
        ({"LoRA_type": "Lumina"}, "Lumina", "LoRA_type"),
        ({"LoRA_type": "Anima"}, "Anima", "LoRA_type"),
        ({"LoRA_type": "HunyuanImage-2.1"}, "HunyuanImage-2.1", "LoRA_type"),
        ({"lumina_checkbox": True, **LORA}, "Lumina", "lumina_checkbox"),
    ],
)
def test_another_model_family_is_refused_naming_family_and_key(data, family: str, key: str, tmp_path, capsys) -> None:
    message = refusal(data)
    assert family in message and f"({key} = " in message and "1.5 and SDXL" in message
    source = tmp_path / "file.json"
    source.write_text(json.dumps(data))
    assert main(["preset", "import-kohya", str(source), "-o", str(tmp_path / "out.json")]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert family in first and key in first
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("value", [True, "true"])
def test_sdxl_true_is_an_sdxl_config(value) -> None:
    # kohya_gui/lora_gui.py train_model: sdxl -> sdxl_train_network.py, no_half_vae and cache_text_encoder_outputs
    config, report = import_kohya({"sdxl": value, "sdxl_no_half_vae": True, "sdxl_cache_text_encoder_outputs": True, "fp8_base": True, **LORA})
    assert config.model.model_family == "sdxl"
    assert config.precision.no_half_vae and config.precision.cache_text_encoder_outputs and config.precision.fp8_base
    assert "sdxl" in report.keys("migrated")


def test_sdxl_false_leaves_the_family_to_the_model_and_keeps_sdxl_options_with_a_note() -> None:
    config, report = import_kohya({"sdxl": False, "sdxl_no_half_vae": True, **LORA})
    assert config.model.model_family == "auto" and config.precision.no_half_vae
    assert "sdxl_no_half_vae" in report.keys("migrated") and "sdxl" in report.keys("ignored")


def test_the_fine_tune_tabs_sdxl_checkbox_is_refused_as_that_tab() -> None:
    assert "fine-tune or DreamBooth config (sdxl_checkbox is set)" in refusal({"sdxl_checkbox": True, "learning_rate": 1e-5})


def test_two_text_encoder_rates_in_additional_parameters_and_back() -> None:
    config, report = import_kohya({"sdxl": True, **LORA, "learning_rate": 1e-4, "additional_parameters": "--text_encoder_lr 5e-5 1e-5 --zero_terminal_snr"})
    assert config.optimizer.text_encoder_lr == 5e-5 and config.optimizer.text_encoder_2_lr == 1e-5
    assert config.noise.zero_terminal_snr is True and report.unsupported == []
    exported, export_report = export_kohya(config)
    assert exported["sdxl"] is True and "--text_encoder_lr 5e-05 1e-05" in exported["additional_parameters"]
    assert "--zero_terminal_snr" in exported["additional_parameters"] and export_report.unsupported == []
    again, _ = import_kohya(json.loads(kohya_to_json(exported)))
    assert again.optimizer.text_encoder_2_lr == 1e-5 and again.noise.zero_terminal_snr and again.model.model_family == "sdxl"


def test_one_text_encoder_rate_trains_both_sdxl_encoders() -> None:
    # train_model: text_encoder_lr_list = [text_encoder_lr, text_encoder_lr]
    config, _ = import_kohya({"sdxl": True, **LORA, "text_encoder_lr": 3e-5, "unet_lr": 1e-4})
    assert config.optimizer.text_encoder_lr == 3e-5 and config.optimizer.text_encoder_2_lr is None
    assert "--text_encoder_lr" not in export_kohya(config)[0]["additional_parameters"]


def test_sd15_v_prediction_stays_supported() -> None:
    config, _ = import_kohya({"v2": False, "v_parameterization": True, **LORA})
    assert config.model.v_parameterization is True


# -- not a LoRA config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, says",
    [
        ({}, "holds no settings"),
        ({"img/a.png": {"caption": "a dog", "tags": "dog"}}, "caption metadata"),
        ({"colour": "blue", "size": 3}, "none of its 2 keys is a Kohya GUI setting"),
        ({"learning_rate_te": 1e-5, "learning_rate": 5e-5, "epoch": 4}, "DreamBooth config (learning_rate_te is set)"),
        ({"no_token_padding": False, "learning_rate": 5e-5}, "DreamBooth config (no_token_padding is set)"),
        ({"train_text_encoder": True, "use_latent_files": "No"}, "fine-tune config (train_text_encoder is set)"),
        ({"num_vectors_per_token": 8, "token_string": "zxc", "network_dim": 8}, "textual inversion config (num_vectors_per_token is set)"),
    ],
)
def test_what_is_not_a_lora_config_is_refused_saying_what_it_looks_like(data, says: str) -> None:
    assert says in refusal(data)


def test_an_old_lora_file_with_a_dreambooth_key_is_still_a_lora_file() -> None:
    # kohya_ss presets/lora/lion_optimizer.json (2023) saved no_token_padding beside its LoRA settings
    config, _ = import_kohya({"no_token_padding": False, "network_dim": 16, "unet_lr": 1e-4})
    assert config.network.network_dim == 16


# -- LyCORIS and other network kinds -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k, ours in LORA_TYPES.items() if ours is None])
def test_network_kinds_we_do_not_train_are_refused_by_name(kind: str) -> None:
    message = refusal({"LoRA_type": kind, "network_dim": 8})
    assert f'LoRA_type "{kind}"' in message and kind.split("/")[-1].removeprefix("Kohya ") in message


def test_the_refused_kinds_are_the_ones_the_issue_lists() -> None:
    refused = {k for k, ours in LORA_TYPES.items() if ours is None}
    for name in ("iA3", "DyLoRA", "GLoRA", "Diag-OFT", "BOFT", "Native Fine-Tuning", "LoRA-FA"):
        assert any(name in k for k in refused), name
    # sd-scripts' own networks.loha/lokr (SDXL/Anima only in the Kohya GUI) stay refused
    assert {"Kohya LoHa", "Kohya LoKr", "Kohya DyLoRA"} <= refused
    assert LORA_TYPES["LyCORIS/LoCon"] == LORA_TYPES["Kohya LoCon"] == "LoCon"
    # LyCORIS LoHa and LoKr are trained (issue 17, docs/lycoris.md)
    assert (LORA_TYPES["LyCORIS/LoHa"], LORA_TYPES["LyCORIS/LoKr"]) == ("LoHa", "LoKr")


def test_lokr_with_a_huge_dim_imports_as_full_matrix_lokr() -> None:
    # kohya_ss test/config/LoKR-AdamW8bit-toml.json: network_dim 100000 (LoKr's "full rank" marker)
    config, _ = import_kohya({"LoRA_type": "LyCORIS/LoKr", "network_dim": 100000, "conv_dim": 100000})
    assert (config.network.lora_type, config.network.network_dim, config.network.conv_dim) == ("LoKr", 100000, 100000)


def test_an_unknown_lora_type_is_refused() -> None:
    assert 'LoRA_type "Super LoRA"' in refusal({"LoRA_type": "Super LoRA"})


# -- learning rates ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rates, unet, te",
    [
        ({"learning_rate": 5e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5}, 1e-4, 5e-5),
        ({"learning_rate": 5e-4, "unet_lr": 1e-4, "text_encoder_lr": 0}, 1e-4, 0),  # UNet-only
        ({"learning_rate": 5e-4, "unet_lr": 0, "text_encoder_lr": 5e-5}, 0, 5e-5),  # text-encoder-only
        ({"learning_rate": 5e-4, "unet_lr": 0, "text_encoder_lr": 0}, 5e-4, 5e-4),  # both at learning_rate
        ({"learning_rate": 5e-4, "unet_lr": "", "text_encoder_lr": ""}, 5e-4, 5e-4),  # "" is 0
        ({"learning_rate": 5e-4, "unet_lr": 1e-4, "text_encoder_lr": ""}, 1e-4, 0),  # a lone "" TE rate: UNet-only
        ({"learning_rate": 5e-4, "unet_lr": "0.0", "text_encoder_lr": "0"}, 5e-4, 5e-4),
        ({"learning_rate": 5e-4}, 5e-4, 5e-4),  # no per-part keys: learning_rate (sd-scripts without the flags)
        ({"learning_rate": 5e-4, "unet_lr": None, "text_encoder_lr": None}, 5e-4, 5e-4),
        ({"learning_rate": 5e-4, "text_encoder_lr": 0}, 5e-4, 0),
        ({"learning_rate": 5e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5, "additional_parameters": "--network_train_unet_only"}, 1e-4, 0),
        ({"learning_rate": 5e-4, "unet_lr": 0, "text_encoder_lr": 5e-5, "additional_parameters": "--network_train_unet_only"}, 5e-4, 0),
        ({"learning_rate": 5e-4, "additional_parameters": "--network_train_text_encoder_only"}, 0, 5e-4),
    ],
)
def test_learning_rates_follow_the_kohya_gui(rates: dict, unet: float, te: float) -> None:
    config, _ = import_kohya({**LORA, **rates})
    assert (config.effective_unet_lr if config.trains_unet else 0) == pytest.approx(unet)
    assert (config.effective_text_encoder_lr if config.trains_text_encoder else 0) == pytest.approx(te)


def test_both_zero_was_refused_before_and_now_trains_both_at_the_learning_rate() -> None:
    config, report = import_kohya({**LORA, "learning_rate": 1e-4, "unet_lr": 0, "text_encoder_lr": 0})
    assert config.trains_unet and config.trains_text_encoder
    assert {"unet_lr", "text_encoder_lr"} <= set(report.keys("migrated"))


@pytest.mark.parametrize(
    "rates",
    [
        {"learning_rate": 0, "unet_lr": 0, "text_encoder_lr": 0},  # the Kohya GUI: "Please input learning rate values."
        {"learning_rate": "", "unet_lr": 1e-4},  # the TE part falls back to an empty (0) learning_rate
        {"learning_rate": 0},
    ],
)
def test_a_part_that_falls_back_to_a_zero_learning_rate_is_refused(rates: dict) -> None:
    assert "learning_rate is" in refusal({**LORA, **rates})


def test_prodigy_file_without_part_rates_trains_at_its_learning_rate_without_false_advice() -> None:
    config, _ = import_kohya({**LORA, "optimizer": "Prodigy", "learning_rate": 1.0})
    assert config.effective_unet_lr == config.effective_text_encoder_lr == 1.0
    assert not [n for n in config.summary() if "Prodigy" in n]


def test_adaptive_optimizer_advice_looks_at_the_rates_that_are_used() -> None:
    low_base = import_kohya({**LORA, "optimizer": "Prodigy", "learning_rate": 1e-4, "unet_lr": 1.0, "text_encoder_lr": 1.0})[0]
    assert not [n for n in low_base.summary() if "Prodigy" in n]
    low_parts = import_kohya({**LORA, "optimizer": "Prodigy", "learning_rate": 1.0, "unet_lr": 1e-4, "text_encoder_lr": 1e-4})[0]
    assert [n for n in low_parts.summary() if "Prodigy" in n]


# -- argument strings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ('"weight_decay=0.01" "betas=0.9,0.99"', {"weight_decay": 0.01, "betas": (0.9, 0.99)}),
        ("'weight_decay=0.01' 'betas=0.9,0.99'", {"weight_decay": 0.01, "betas": (0.9, 0.99)}),
        ("weight_decay=0.01, betas=0.9,0.99", {"weight_decay": 0.01, "betas": (0.9, 0.99)}),
        ("weight_decay=0.01 , decouple=True", {"weight_decay": 0.01, "decouple": True}),
        ("betas=(0.9,0.99) eps=1e-8", {"betas": (0.9, 0.99), "eps": 1e-8}),
        ("decouple=True weight_decay=0.6 betas=0.9,0.99 use_bias_correction=True",
         {"decouple": True, "weight_decay": 0.6, "betas": (0.9, 0.99), "use_bias_correction": True}),
    ],
)
def test_optimizer_args_are_split_as_kohya_splits_them(text: str, expected: dict) -> None:
    config, _ = import_kohya({**LORA, "optimizer_args": text})
    assert parse_optimizer_args(config.optimizer.optimizer_args) == expected


def test_additional_parameters_map_flags_to_settings_and_name_the_rest() -> None:
    config, report = import_kohya({**LORA, "max_grad_norm": 1.0, "additional_parameters":
                                   '--max_grad_norm=0 --lr_scheduler_type "CosineAnnealingLR" --lr_scheduler_args "T_max=1000" "eta_min=0e-0" --min_timestep=0 --max_timestep 500 --seed 42'})
    assert config.optimizer.max_grad_norm == 0.0  # the command line wins over the TOML in sd-scripts
    assert config.training.seed == 42
    left_out = " ".join(str(i) for i in report.unsupported)
    assert "--lr_scheduler_type=CosineAnnealingLR" in left_out and "--lr_scheduler_args=T_max=1000 eta_min=0e-0" in left_out
    assert "--max_timestep=500" in left_out  # not a setting of ours, and not at its no-effect value
    assert "--min_timestep=0" in " ".join(str(i) for i in report.ignored)


def test_additional_optimizer_args_replace_the_files() -> None:
    config, _ = import_kohya({**LORA, "optimizer_args": "weight_decay=0.1",
                              "additional_parameters": ' --optimizer_args "weight_decay=0.01" "d_coef=1" "betas=0.9,0.99"'})
    assert parse_optimizer_args(config.optimizer.optimizer_args) == {"weight_decay": 0.01, "d_coef": 1, "betas": (0.9, 0.99)}


def test_scheduler_args_are_named_as_not_supported() -> None:
    _, report = import_kohya({**LORA, "lr_scheduler_args": '"T_max=100"'})
    assert "lr_scheduler_args" in report.keys("unsupported") and "T_max=100" in str(report.unsupported[0])


# -- empty values --------------------------------------------------------------------------------------------


def test_every_setting_has_a_rule_for_its_empty_value() -> None:
    assert DIRECT_KEYS - OURS_ONLY <= set(EMPTY_VALUES)


@pytest.mark.parametrize("key", sorted(DIRECT_KEYS - OURS_ONLY))
def test_an_empty_value_means_what_the_kohya_gui_makes_of_it(key: str) -> None:
    data = {**LORA, "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 1e-4, key: ""}
    rule = EMPTY_VALUES[key]
    if rule is not None and not isinstance(rule, (bool, int, float, str)):  # refused
        assert f": {key} is empty" in refusal(data)
        return
    config, report = import_kohya(data)
    if key in ("unet_lr", "text_encoder_lr"):
        other = "text_encoder_lr" if key == "unet_lr" else "unet_lr"
        assert get_value(config, key) == 0 and get_value(config, other) == 1e-4  # "" is 0: that part is not trained
    elif key != "learning_rate":
        assert get_value(config, key) == rule
    if get_value(config, key) != get_value(DEFAULTS, key) or key in ("unet_lr", "text_encoder_lr"):
        assert report.mentions(key), "a replaced empty value is reported"


@pytest.mark.parametrize(
    "key, value",
    [
        ("caption_extension", ".caption"),  # sd-scripts' default, not our .txt
        ("lr_scheduler_num_cycles", 1),  # update_my_data: int("") fails -> 1
        ("lr_warmup", 0.0),  # update_my_data: int("") fails -> 0 (not our 10 %)
        ("save_every_n_epochs", 0),
        ("enable_bucket", False),
        ("cache_latents", False),
        ("optimizer", "AdamW"),
        ("lr_scheduler", "constant"),
        ("network_dim", 4),
        ("max_bucket_reso", 1024),
    ],
)
def test_empty_values_that_differ_from_our_defaults(key: str, value: Any) -> None:
    config, _ = import_kohya({**LORA, key: ""})
    assert get_value(config, key) == value


@pytest.mark.parametrize("key", ["epoch", "train_batch_size", "max_resolution", "pretrained_model_name_or_path", "bucket_reso_steps"])
def test_empty_values_the_kohya_gui_cannot_train_with_are_refused(key: str) -> None:
    assert f"{key} is empty" in refusal({**LORA, key: ""})


def test_empty_conv_dim_is_refused_only_for_locon() -> None:
    assert "conv_dim is empty" in refusal({"LoRA_type": "Kohya LoCon", "conv_dim": ""})
    assert import_kohya({**LORA, "conv_dim": ""})[0].network.conv_dim == 1


def test_a_missing_optimizer_is_adamw_as_the_kohya_gui_chooses() -> None:
    assert import_kohya({**LORA})[0].optimizer.optimizer == "AdamW"
    assert import_kohya({**LORA, "use_8bit_adam": True})[0].optimizer.optimizer == "AdamW8bit"


# -- paths from another computer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, os_name, kind",
    [
        ("C:\\Users\\me\\lora", "posix", "Windows"),
        ("C:/Users/me/lora", "posix", "Windows"),
        ("d:", "posix", "Windows"),
        ("\\\\NAS\\share\\img", "posix", "Windows"),
        ("models\\sd15.safetensors", "posix", "Windows"),
        ("/home/me/lora", "posix", None),
        ("runwayml/stable-diffusion-v1-5", "posix", None),
        ("/home/me/lora", "nt", "POSIX"),
        ("C:\\Users\\me", "nt", None),
        ("//NAS/share/x", "nt", None),
        ("", "posix", None),
    ],
)
def test_foreign_paths_are_recognised(value: str, os_name: str, kind: str | None) -> None:
    assert foreign_kind(value, os_name) == kind


def _windows_file(tmp_path: Path) -> dict[str, Any]:
    return {**LORA, "optimizer": "AdamW", "train_data_dir": str(make_dataset(tmp_path / "img", {"2_x": 2})),
            "output_dir": "C:/Users/me/lora/model", "logging_dir": "\\\\NAS\\share\\log", "max_resolution": "64,64", "min_bucket_reso": 64}


def test_windows_paths_are_named_in_the_import_report(tmp_path) -> None:
    config, report = import_kohya(_windows_file(tmp_path))
    assert config.folders.output_dir == "C:/Users/me/lora/model"  # kept verbatim
    assert report.keys("problems") == ["output_dir", "logging_dir"]
    assert report.lines()[1].startswith("MUST BE CHANGED")


def test_windows_paths_are_refused_at_start_and_no_folder_is_created(tmp_path, monkeypatch, capsys) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    source = tmp_path / "win.json"
    source.write_text(json.dumps(_windows_file(tmp_path)))
    for argv in (["train", "--config", str(source), "--print-command"], ["train", "--config", str(source)]):
        assert main(argv) == 2
        error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert error == ["error: folders.output_dir is a Windows path (C:/Users/me/lora/model), written on another computer: choose the file or folder on this one"]
    assert list(work.iterdir()) == []  # no ./C:/Users/... folder


def test_the_gui_start_refusal_names_the_setting_by_its_label_in_korean(tmp_path) -> None:
    from loratrainer.gui.i18n import Translator
    from loratrainer.launch.start import LaunchRefused, preflight

    config, _ = import_kohya(_windows_file(tmp_path))
    with pytest.raises(LaunchRefused) as info:
        preflight(config)
    korean = Translator("ko").message(info.value.msg)
    assert "다른 컴퓨터" in korean and "C:/Users/me/lora/model" in korean


# -- print-command runs the preflight ------------------------------------------------------------------------


def test_print_command_refuses_a_missing_base_model_naming_the_setting(tmp_path, capsys) -> None:
    config = with_values(DEFAULTS, {"optimizer.optimizer": "AdamW", "folders.train_data_dir": str(make_dataset(tmp_path / "img", {"2_x": 2})),
                                    "folders.output_dir": str(tmp_path / "out"), "buckets.max_resolution": "64,64", "buckets.min_bucket_reso": 64,
                                    "model.pretrained_model_name_or_path": str(tmp_path / "missing.safetensors")})
    (tmp_path / "c.json").write_text(config.model_dump_json())
    assert main(["train", "--config", str(tmp_path / "c.json"), "--print-command"]) == 2
    assert f"model.pretrained_model_name_or_path: {tmp_path / 'missing.safetensors'} does not exist" in capsys.readouterr().err
    # a file the input check takes for a model by its signature (a pickle, as in a .ckpt); it reads no weights
    (tmp_path / "missing.safetensors").write_bytes(pickle.dumps({}, protocol=2))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "accelerate.commands.launch" in out and str(tmp_path / "out" / "log" / "last_<YYYYmmdd-HHMMSS>") in out


def test_print_command_runs_the_dataset_check(tmp_path, capsys) -> None:
    source = tmp_path / "k.json"
    source.write_text(json.dumps({**LORA, "optimizer": "AdamW", "train_data_dir": str(tmp_path / "nothing"), "output_dir": str(tmp_path / "o")}))
    assert main(["train", "--config", str(source), "--print-command"]) == 2
    assert "dataset check failed" in capsys.readouterr().err


# -- bucket_reso_steps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, buckets, reported", [(1, True, True), (32, True, True), (64, True, False), (128, True, False), (32, False, False)])
def test_bucket_steps_sd_scripts_refuses_are_reported_at_import(steps: int, buckets: bool, reported: bool) -> None:
    _, report = import_kohya({**LORA, "bucket_reso_steps": steps, "enable_bucket": buckets})
    assert ("bucket_reso_steps" in report.keys("problems")) == reported


@pytest.mark.parametrize("steps, reported", [(1, True), (16, True), (32, False), (64, False)])
def test_sdxl_bucket_steps_follow_sdxl_train_network(steps: int, reported: bool) -> None:
    # sdxl_train_network.py: verify_bucket_reso_steps(32)
    _, report = import_kohya({**LORA, "sdxl": True, "bucket_reso_steps": steps, "enable_bucket": True})
    assert ("bucket_reso_steps" in report.keys("problems")) == reported


# -- export --------------------------------------------------------------------------------------------------


def test_export_writes_every_key_of_the_kohya_lora_tab() -> None:
    data, _ = export_kohya(DEFAULTS)
    assert set(data) == set(KOHYA_LORA_TAB) and len(data) == 287
    # keys the Kohya GUI would otherwise keep from its screen, at values that change nothing
    assert data["max_train_epochs"] == 0 and data["lr_scheduler_args"] == "" and data["min_timestep"] == 0
    assert data["max_timestep"] == 1000 and data["stop_text_encoder_training"] == 0 and data["mem_eff_attn"] is False
    assert data["dataset_config"] == "" and data["additional_parameters"] == "" and data["max_train_steps"] == 0
    assert data["sdxl"] is False and data["flux1_checkbox"] is False and data["v2"] is False


def test_export_writes_values_that_reproduce_our_run() -> None:
    config = with_values(DEFAULTS, {"optimizer.optimizer": "Prodigy", "optimizer.learning_rate": 1.0, "optimizer.unet_lr": None,
                                    "optimizer.text_encoder_lr": 0.0, "optimizer.lr_warmup": 5.0, "network.lora_type": "LoCon",
                                    "network.conv_dim": 4, "dataset.caption_extension": ".txt"})
    data, _ = export_kohya(config)
    assert data["unet_lr"] == 1.0 and data["text_encoder_lr"] == 0.0  # Kohya: TE 0 with UNet set = UNet-only
    assert data["LoRA_type"] == "Kohya LoCon" and data["conv_dim"] == 4 and data["lr_warmup"] == 5
    again, report = import_kohya(json.loads(kohya_to_json(data)))
    assert not again.trains_text_encoder and again.effective_unet_lr == 1.0
    assert report.unsupported == [] and report.problems == []


@pytest.mark.parametrize("spec", [s for s in field_specs() if s.kind in ("int", "float") and s.name in KOHYA_LORA_TAB], ids=lambda s: s.name)
def test_round_trip_keeps_each_number(spec) -> None:
    value = spec.default + 1 if spec.kind == "int" else (spec.default or 0) + 0.5
    if spec.maximum is not None and value > spec.maximum:
        value = spec.maximum
    try:
        config = with_values(DEFAULTS, {spec.path: value})
    except ValueError:
        pytest.skip("a cross-field rule refuses this value alone")
    data, _ = export_kohya(config)
    again, _ = import_kohya(json.loads(kohya_to_json(data)))
    assert get_value(again, spec.path) == get_value(config, spec.path)


# -- the report in the GUI's languages -----------------------------------------------------------------------


def test_report_sections_are_said_in_korean() -> None:
    from loratrainer.gui.i18n import Translator

    _, report = import_kohya({**LORA, "bucket_reso_steps": 32, "rank_dropout": 0.1, "caption_extension": "", "seed": "7",
                              "xformers": True, "mem_eff_attn": False, "output_dir": "C:\\out"}, "k.json")
    korean = report.lines(Translator("ko").message)
    english = report.lines()
    assert len(korean) == len(english) >= 10
    headers = [line for line in korean if not line.startswith("  ")]
    assert all(any("\uac00" <= ch <= "\ud7a3" for ch in line) for line in headers), headers
    assert "학습 전에 반드시 바꿔야 함" in korean[1]
    assert english[1].startswith("MUST BE CHANGED BEFORE TRAINING")


def test_refusals_are_said_in_korean_too() -> None:
    from loratrainer.gui.i18n import Translator

    with pytest.raises(KohyaRefused) as info:
        import_kohya({"sd3_checkbox": True, **LORA}, "x.json")
    assert isinstance(info.value.msg, Msg)
    korean = Translator("ko").error_text(info.value)
    assert "Stable Diffusion 3" in korean and "sd3_checkbox" in korean and "SDXL LoRA만" in korean


def test_train_set_applies_before_the_file_is_checked(tmp_path, capsys) -> None:
    """Issue 22: `train --config FILE --set KEY=VALUE` applies the overrides first, then validates, so a value
    given on the command line mends the file (a Kohya config with num_machines 2 and no main process address)."""
    source = tmp_path / "two-machines.json"
    source.write_text(json.dumps({**LORA, "optimizer": "AdamW", "num_machines": 2, "num_processes": 2, "max_resolution": "64,64", "min_bucket_reso": 64,
                                  "train_data_dir": str(make_dataset(tmp_path / "img", {"2_x": 2})), "output_dir": str(tmp_path / "model")}))
    assert main(["train", "--config", str(source), "--print-command"]) == 2
    assert "main_process_ip" in capsys.readouterr().err
    assert main(["train", "--config", str(source), "--set", "main_process_ip=10.0.0.2", "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "--num_machines 2" in out and "--main_process_ip 10.0.0.2" in out
    assert main(["train", "--config", str(source), "--set", "no_such_setting=1", "--print-command"]) == 2
    assert "unknown setting 'no_such_setting'" in capsys.readouterr().err
