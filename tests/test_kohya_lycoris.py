"""Kohya GUI configs with LyCORIS/LoHa and LyCORIS/LoKr: imported as our LoHa/LoKr with the GUI's key names,
LyCORIS options peft has not refused by name (English and Korean), exported back under the GUI's names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratrainer.config import ConfigError, TrainingConfig, with_values
from loratrainer.gui.i18n import Translator
from loratrainer.config.kohya import export_kohya, import_kohya
from tests.test_kohya import test_every_fixture_imports_with_each_value_as_written_or_reported as imports_every_key

FIXTURES = Path(__file__).parent / "fixtures" / "kohya_ss"  # real Kohya GUI files (README there: source, commits)
SD15_LYCORIS = ["presets/lora/loha-sd15.json", "presets/lora/sd15 - EDG_LoHaOptiSettings.json", "presets/lora/lokr-sd15.json",
                "presets/lora/sd15 - LoKr v1.1.json", "presets/lora/sd15 - LoKr v2.0.json", "test/config/LoKR-AdamW8bit-toml.json"]


LYCORIS_KEYS = {"LoRA_type", "network_dim", "network_alpha", "conv_dim", "conv_alpha", "factor", "decompose_both",
                "use_cp", "use_tucker", "use_scalar", "rank_dropout", "module_dropout", "train_norm", "dora_wd",
                "bypass_mode", "rank_dropout_scale", "LyCORIS_preset", "network_dropout"}


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8-sig"))


@pytest.mark.parametrize("name", SD15_LYCORIS)
def test_every_key_of_the_real_files_is_imported_or_reported(name):
    imports_every_key(FIXTURES / name)


def test_loha_file_imports_as_loha_with_its_ranks_and_tucker():
    config, report = import_kohya(_load("presets/lora/loha-sd15.json"))
    n = config.network
    assert (n.lora_type, n.network_dim, n.network_alpha, n.conv_dim, n.conv_alpha) == ("LoHa", 32, 16.0, 8, 4.0)
    assert n.use_tucker and "use_cp" in report.keys("migrated")  # the file's use_cp: LyCORIS's older name
    assert not set(report.keys("unsupported")) & LYCORIS_KEYS


def test_lokr_file_imports_as_lokr_with_factor_and_decompose_both():
    config, report = import_kohya(_load("presets/lora/lokr-sd15.json"))
    n = config.network
    assert (n.lora_type, n.network_dim, n.conv_dim, n.factor, n.decompose_both) == ("LoKr", 64, 64, -1, False)
    assert not set(report.keys("unsupported")) & LYCORIS_KEYS


def test_full_matrix_lokr_preset_keeps_its_huge_rank_and_refuses_what_peft_lacks():
    config, report = import_kohya(_load("presets/lora/sd15 - LoKr v1.1.json"))
    n = config.network
    assert (n.lora_type, n.network_dim, n.conv_dim, n.factor, n.decompose_both) == ("LoKr", 100000, 100000, 6, True)
    assert n.scale_weight_norms == 1.0  # LyCORIS's max-norm: supported
    unsupported = {item.key: item for item in report.unsupported}
    assert {"train_norm", "rank_dropout_scale", "use_cp"} <= set(unsupported)
    assert str(unsupported["train_norm"]) == "train_norm: True: peft's LoHa/LoKr have no train_norm option; trained without it"
    korean = unsupported["train_norm"].render(Translator("ko").message)
    assert korean == "train_norm: True: peft의 LoHa/LoKr에는 train_norm 옵션이 없습니다. 이 옵션 없이 학습합니다"
    assert "LyCORIS_preset" in report.keys("migrated")  # our module set is said out loud


def test_lycoris_settings_with_a_lora_type_that_has_none_are_reported_not_imported():
    config, report = import_kohya({"LoRA_type": "Standard", "rank_dropout": 0.1, "factor": 8, "decompose_both": False})
    assert config.network.rank_dropout == 0 and config.network.factor == -1
    assert {"rank_dropout", "factor"} <= set(report.keys("unsupported"))
    assert "decompose_both" in report.keys("ignored")


def test_lycoris_network_dropout_is_dropped_as_lycoris_does():
    config, report = import_kohya({"LoRA_type": "LyCORIS/LoHa", "network_dropout": 0.1})
    assert config.network.network_dropout == 0 and "network_dropout" in report.keys("migrated")


@pytest.mark.parametrize("lora_type, kohya", [("LoHa", "LyCORIS/LoHa"), ("LoKr", "LyCORIS/LoKr")])
def test_export_writes_the_gui_names_and_round_trips(lora_type, kohya):
    config = with_values(TrainingConfig(), {"lora_type": lora_type, "network_dim": 16, "conv_dim": 8,
                                            "rank_dropout": 0.1, "module_dropout": 0.05,
                                            **({"factor": 8, "decompose_both": True} if lora_type == "LoKr" else {"use_tucker": True})})
    data, _ = export_kohya(config)
    assert data["LoRA_type"] == kohya and data["rank_dropout"] == 0.1 and data["module_dropout"] == 0.05
    again, report = import_kohya(data)
    assert again.network == config.network and report.keys("unsupported") == []


@pytest.mark.parametrize(
    "values, setting",
    [
        ({"lora_type": "LoHa", "network_dropout": 0.1}, "network.network_dropout"),
        ({"lora_type": "LoKr", "use_tucker": True}, "network.use_tucker"),
        ({"lora_type": "LoHa", "save_diffusers_format": True}, "saving.save_diffusers_format"),
        ({"lora_type": "LoCon", "rank_dropout": 0.1}, "network.rank_dropout"),
        ({"lora_type": "Standard", "factor": 4}, "network.factor"),
        ({"lora_type": "LoCon", "network_dim": 2000}, "network.network_dim"),
        ({"lora_type": "LoHa", "conv_dim": 4096}, "network.conv_dim"),
        ({"lora_type": "LoKr", "factor": 0}, "factor"),
    ],
)
def test_settings_a_type_cannot_honour_are_refused_by_name(values, setting):
    with pytest.raises((ConfigError, ValueError), match=setting.replace(".", r"\.")):
        with_values(TrainingConfig(), values)


@pytest.mark.parametrize(
    "values, labels",
    [
        ({"network.lora_type": "LoCon", "network.network_dim": 2000}, ["네트워크 랭크 (차원)", "LoRA 종류"]),
        ({"network.lora_type": "LoHa", "network.network_dropout": 0.1}, ["네트워크 드롭아웃"]),
        ({"network.lora_type": "Standard", "network.rank_dropout": 0.1}, ["랭크 드롭아웃", "LoRA 종류"]),
        ({"network.lora_type": "LoKr", "network.use_tucker": True}, ["터커 분해 사용"]),
    ],
)
def test_the_refusals_read_in_korean_with_the_page_labels(values, labels):
    from loratrainer.gui.form import FormError, values_to_config

    with pytest.raises(FormError) as err:
        values_to_config(values)
    text = Translator("ko").error_text(err.value)
    assert all(label in text for label in labels) and "only" not in text, text


def test_lokr_accepts_a_full_matrix_rank():
    assert with_values(TrainingConfig(), {"lora_type": "LoKr", "network_dim": 100000}).network.network_dim == 100000


def test_the_disk_space_estimate_of_a_full_matrix_lokr_is_bounded_by_its_real_size():
    """The launcher's free-space check: a 100000-rank LoKr (full factors) must not be estimated as 100000 LoRA ranks.
    Real full-SD1.5 sizes at fp16 (test_model_lycoris' meta-device arithmetic): factor 6 -> 72.6 MB, 8 -> 29.6 MB."""
    from loratrainer.launch.start import estimated_output_bytes

    def per_file(**values):
        config = with_values(TrainingConfig(), {"save_every_n_epochs": 0, **values})
        return (estimated_output_bytes(config, epochs=1, total_steps=10) - 100 * 2**20) / 2  # final + interrupted

    full = dict(lora_type="LoKr", network_dim=100000, conv_dim=100000)
    assert 72.5e6 <= per_file(**full, factor=6) <= 400e6
    assert 29.6e6 <= per_file(**full, factor=8) <= 200e6
    loha, lora = per_file(lora_type="LoHa", network_dim=8, conv_dim=4), per_file(lora_type="LoCon", network_dim=8, conv_dim=4)
    assert loha == 2 * lora and loha >= 30.4e6  # the measured LoHa dim 8 / conv 4 file
