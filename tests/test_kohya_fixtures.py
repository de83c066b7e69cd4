"""Every Kohya GUI file of kohya_ss presets/ and test/config/ (and older versions of some) against the outcome
table of docs/kohya-compat.md: imported with these key facts, or refused with this sentence. Plus: the table in
the doc says the same as this one, the CLI commands never show a traceback on any of them or on malformed JSON,
and import -> export -> import keeps the effective training."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from loratrainer.cli import main
from loratrainer.config import ConfigError, TrainingConfig
from loratrainer.config.kohya import export_kohya, import_kohya, kohya_to_json
from loratrainer.config.kohya_gui_keys import KOHYA_LORA_TAB

ROOT = Path(__file__).parent / "fixtures" / "kohya_ss"
FILES = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.json"))
DOC = Path(__file__).parent.parent / "docs" / "kohya-compat.md"

# relative path -> the facts of the imported config (effective rates; 0 = that part is not trained), or the start
# of the refusal sentence after the file name.
EXPECTED: dict[str, dict[str, Any] | str] = {
    'history/093fc198/presets/lora/dadaptation.json': 'optimizer: unknown optimizer',  # DAdaptation: an optimizer name sd-scripts renamed
    'history/699ed335/test/config/locon-AdamW.json': {'model_family': 'auto', 'lora_type': 'LoCon', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 16, 'problems': []},
    'history/699ed335/test/config/locon-Prodigy.json': {'model_family': 'auto', 'lora_type': 'LoCon', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 16, 'problems': ['bucket_reso_steps']},
    'history/8775667f/presets/lora/lion_optimizer.json': {'model_family': 'auto', 'lora_type': 'Standard', 'optimizer': 'AdamW', 'unet_lr': 3.333e-05, 'text_encoder_lr': 1.6666e-05, 'network_dim': 128, 'problems': ['train_data_dir', 'output_dir', 'logging_dir']},
    'history/fae048ca/test/config/SDXL-Standard-DAdaptation.json': {'model_family': 'sdxl', 'lora_type': 'LoCon', 'optimizer': 'Adafactor', 'unet_lr': 4e-07, 'text_encoder_lr': 0, 'network_dim': 64, 'problems': ['bucket_reso_steps']},
    'presets/dreambooth/sd3_bdsqlsz_v1.json': 'is a Stable Diffusion 3 config (sd3_checkbox = true)',
    'presets/dreambooth/sd3_bdsqlsz_v2.json': 'is a Stable Diffusion 3 config (sd3_checkbox = true)',
    'presets/finetune/SDXL - AI_Now PagedAdamW8bit v1.0.json': 'is a Kohya GUI fine-tune config (train_text_encoder is set), not a LoRA config: loratrainer trains LoRAs only',
    'presets/finetune/SDXL - Essenz series by AI_Characters_Training v1.0.json': 'is a Kohya GUI fine-tune config (train_text_encoder is set), not a LoRA config: loratrainer trains LoRAs only',
    'presets/finetune/adafactor.json': 'is a Kohya GUI fine-tune config (train_text_encoder is set), not a LoRA config: loratrainer trains LoRAs only',
    'presets/finetune/lion.json': 'is a Kohya GUI fine-tune config (train_text_encoder is set), not a LoRA config: loratrainer trains LoRAs only',
    'presets/lora/SDXL - 1 image LoRA v1.0.json': {'model_family': 'sdxl', 'lora_type': 'LoKr', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 100000, 'problems': []},
    'presets/lora/SDXL - LoHA AI_Characters v1.0.json': {'model_family': 'sdxl', 'lora_type': 'LoHa', 'optimizer': 'AdamW8bit', 'unet_lr': 0.001, 'text_encoder_lr': 0.001, 'network_dim': 32, 'problems': []},
    'presets/lora/SDXL - LoKR v1.0.json': {'model_family': 'sdxl', 'lora_type': 'LoKr', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 64, 'problems': []},
    'presets/lora/SDXL - LoRA AI_Now ADamW v1.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 32, 'problems': []},
    'presets/lora/SDXL - LoRA AI_Now prodigy v1.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 32, 'problems': []},
    'presets/lora/SDXL - LoRA AI_characters standard v1.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW8bit', 'unet_lr': 2e-05, 'text_encoder_lr': 2e-05, 'network_dim': 32, 'problems': []},
    'presets/lora/SDXL - LoRA AI_characters standard v1.1.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW', 'unet_lr': 3e-05, 'text_encoder_lr': 3e-05, 'network_dim': 32, 'problems': []},
    'presets/lora/SDXL - LoRA adafactor v1.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'Adafactor', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 128, 'problems': []},
    'presets/lora/SDXL - LoRA aitrepreneur clothing v1.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'Adafactor', 'unet_lr': 0.0009, 'text_encoder_lr': 0.0009, 'network_dim': 128, 'problems': []},
    'presets/lora/SDXL - LoRA by malcolmrey training v1.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW8bit', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 32, 'problems': []},
    'presets/lora/SDXL - LoRA face dogu_cat v1.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW8bit', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 92, 'problems': []},
    'presets/lora/SDXL - LoRA finetuning phase 1_v1.1.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 128, 'problems': []},
    'presets/lora/SDXL - LoRA finetuning phase 2_v1.1.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 128, 'problems': ['network_weights']},
    'presets/lora/SDXL - LoRA kudou-reira dadaptadam v1.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'DAdaptAdam', 'unet_lr': 1.0, 'text_encoder_lr': 0, 'network_dim': 256, 'problems': []},
    'presets/lora/SDXL - LoRA kudou-reira dadaptadam v1.1.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'DAdaptAdam', 'unet_lr': 1.0, 'text_encoder_lr': 0, 'network_dim': 64, 'problems': []},
    'presets/lora/SDXL - LoRA kudou-reira prodigy v4.0.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 0, 'network_dim': 256, 'problems': []},
    'presets/lora/SDXL - edgLoRAXL AI_Now.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 32, 'problems': []},
    'presets/lora/SDXL - edgLoRAXL.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 32, 'problems': []},
    'presets/lora/flux1D - adamw8bit fp8.json': 'is a FLUX.1 config (flux1_checkbox = true)',
    'presets/lora/iA3-Prodigy-sd15.json': 'LoRA_type "LyCORIS/iA3" (iA3)',
    'presets/lora/ia3-sd15.json': 'LoRA_type "LyCORIS/iA3" (iA3)',
    'presets/lora/locon-dadaptation-sdxl.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'Adafactor', 'unet_lr': 4e-07, 'text_encoder_lr': 0, 'network_dim': 64, 'problems': ['bucket_reso_steps']},
    'presets/lora/loha-sd15.json': {'model_family': 'auto', 'lora_type': 'LoHa', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 32, 'problems': ['bucket_reso_steps']},
    'presets/lora/lokr-sd15.json': {'model_family': 'auto', 'lora_type': 'LoKr', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 64, 'problems': ['bucket_reso_steps']},
    'presets/lora/sd15 - EDG_LoConOptiSettings.json': {'model_family': 'auto', 'lora_type': 'LoCon', 'optimizer': 'AdamW8bit', 'unet_lr': 0.0001, 'text_encoder_lr': 5e-05, 'network_dim': 64, 'problems': []},
    'presets/lora/sd15 - EDG_LoHaOptiSettings.json': {'model_family': 'auto', 'lora_type': 'LoHa', 'optimizer': 'AdamW8bit', 'unet_lr': 0.0001, 'text_encoder_lr': 5e-05, 'network_dim': 32, 'problems': []},
    'presets/lora/sd15 - EDG_LoraOptiSettings.json': {'model_family': 'auto', 'lora_type': 'Standard', 'optimizer': 'AdamW8bit', 'unet_lr': 0.0001, 'text_encoder_lr': 5e-05, 'network_dim': 64, 'problems': []},
    'presets/lora/sd15 - GLoRA v1.0.json': {'model_family': 'auto', 'lora_type': 'LoKr', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 100000, 'problems': ['bucket_reso_steps']},
    'presets/lora/sd15 - LoKR v1.0.json': {'model_family': 'auto', 'lora_type': 'LoKr', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 100000, 'problems': ['bucket_reso_steps']},
    'presets/lora/sd15 - LoKr v1.1.json': {'model_family': 'auto', 'lora_type': 'LoKr', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 100000, 'problems': ['bucket_reso_steps']},
    'presets/lora/sd15 - LoKr v2.0.json': {'model_family': 'auto', 'lora_type': 'LoKr', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 100000, 'problems': ['bucket_reso_steps']},
    'test/config/Diag-OFT-AdamW8bit-toml.json': 'LoRA_type "LyCORIS/Diag-OFT" (Diag-OFT)',
    'test/config/DyLoRA-Adafactor-toml.json': 'LoRA_type "LyCORIS/DyLoRA" (DyLoRA)',
    'test/config/LoKR-AdamW8bit-toml.json': {'model_family': 'auto', 'lora_type': 'LoKr', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 100000, 'problems': ['bucket_reso_steps']},
    'test/config/SDXL-Standard-Adafactor.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW8bit', 'unet_lr': 0.001, 'text_encoder_lr': 0, 'network_dim': 64, 'problems': []},
    'test/config/SDXL-Standard-AdamW.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/SDXL-Standard-AdamW8bit.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'AdamW8bit', 'unet_lr': 1e-06, 'text_encoder_lr': 0, 'network_dim': 64, 'problems': ['bucket_reso_steps']},
    'test/config/Standard-AdamW.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/Standard-AdamW8bit.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/TI-AdamW8bit-SDXL.json': 'is a Kohya GUI textual inversion config (num_vectors_per_token is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/TI-AdamW8bit-toml.json': 'is a Kohya GUI textual inversion config (num_vectors_per_token is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/TI-AdamW8bit.json': 'is a Kohya GUI textual inversion config (num_vectors_per_token is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth-Adafactor.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth-AdamW.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth-AdamW8bit-masked_loss-toml.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth-AdamW8bit-toml.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth-AdamW8bit.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth-DAdaptAdam.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth-Prodigy-SDXL.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth-Prodigy.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/dreambooth.json': 'is a Kohya GUI DreamBooth config (no_token_padding is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/finetune-AdamW-toml.json': 'is a Kohya GUI fine-tune config (train_text_encoder is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/finetune-AdamW.json': 'is a Kohya GUI fine-tune config (train_text_encoder is set), not a LoRA config: loratrainer trains LoRAs only',
    'test/config/iA3-Prodigy.json': 'LoRA_type "LyCORIS/iA3" (iA3)',
    'test/config/locon-Adafactor.json': {'model_family': 'auto', 'lora_type': 'LoCon', 'optimizer': 'Adafactor', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 16, 'problems': []},
    'test/config/locon-AdamW.json': {'model_family': 'auto', 'lora_type': 'LoCon', 'optimizer': 'AdamW', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 16, 'problems': []},
    'test/config/locon-AdamW8bit-masked_loss-toml.json': {'model_family': 'auto', 'lora_type': 'Standard', 'optimizer': 'AdamW8bit', 'unet_lr': 0.0005, 'text_encoder_lr': 0.0005, 'network_dim': 8, 'problems': []},
    'test/config/locon-AdamW8bit-toml.json': {'model_family': 'auto', 'lora_type': 'Standard', 'optimizer': 'AdamW8bit', 'unet_lr': 0.0005, 'text_encoder_lr': 0.0005, 'network_dim': 8, 'problems': []},
    'test/config/locon-AdamW8bit.json': {'model_family': 'auto', 'lora_type': 'LoCon', 'optimizer': 'AdamW8bit', 'unet_lr': 0.0001, 'text_encoder_lr': 0.0001, 'network_dim': 16, 'problems': []},
    'test/config/locon-Prodigy.json': {'model_family': 'auto', 'lora_type': 'LoCon', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 16, 'problems': ['bucket_reso_steps']},
    'test/config/loha-Prodigy.json': {'model_family': 'sdxl', 'lora_type': 'LoHa', 'optimizer': 'AdamW8bit', 'unet_lr': 0.002, 'text_encoder_lr': 0, 'network_dim': 8, 'problems': ['train_data_dir', 'output_dir', 'logging_dir']},
    'test/config/meta-1_lat.json': 'is not a Kohya GUI config',
    'test/config/t5clrs.json': {'model_family': 'sdxl', 'lora_type': 'Standard', 'optimizer': 'Prodigy', 'unet_lr': 1.0, 'text_encoder_lr': 1.0, 'network_dim': 16, 'problems': []},
}
IMPORTED = [f for f in FILES if isinstance(EXPECTED.get(f), dict)]


def _load(rel: str) -> dict[str, Any]:
    return json.loads((ROOT / rel).read_text(encoding="utf-8-sig"))


def _facts(config: TrainingConfig, report) -> dict[str, Any]:
    o = config.optimizer
    return {
        "model_family": config.model.model_family,
        "lora_type": config.network.lora_type,
        "optimizer": o.optimizer,
        "unet_lr": config.effective_unet_lr if config.trains_unet else 0,
        "text_encoder_lr": config.effective_text_encoder_lr if config.trains_text_encoder else 0,
        "network_dim": config.network.network_dim,
        "problems": report.keys("problems"),
    }


def effective(config: TrainingConfig) -> dict[str, Any]:
    """What training does: the config with each part's rate resolved (None = learning_rate, as Kohya writes it out)."""
    data = config.model_dump(mode="json")
    data["optimizer"]["unet_lr"] = config.effective_unet_lr
    data["optimizer"]["text_encoder_lr"] = config.effective_text_encoder_lr
    return data


def test_every_upstream_file_is_here_and_has_an_expected_outcome() -> None:
    # 69 files of presets/ and test/config/ at the recorded commit, plus the older versions under history/
    assert len([f for f in FILES if not f.startswith("history/")]) == 69
    assert len([f for f in FILES if f.startswith("history/")]) >= 4
    assert set(FILES) == set(EXPECTED)
    assert 8 <= len(IMPORTED) < len(FILES)  # some import, most are refused: neither half is vacuous


@pytest.mark.parametrize("rel", FILES)
def test_each_file_imports_or_is_refused_as_the_table_says(rel: str) -> None:
    expected = EXPECTED[rel]
    if isinstance(expected, dict):
        config, report = import_kohya(_load(rel), rel)
        assert _facts(config, report) == expected
    else:  # refused as a Kohya file we do not take (KohyaRefused), or a value our schema refuses (ConfigError)
        with pytest.raises(ConfigError) as info:
            import_kohya(_load(rel), rel)
        message = str(info.value)
        assert message.startswith(rel) and expected in message.splitlines()[0]


def _doc_rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([^`]+\.json)` \| (imported|refused) \|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_the_doc_table_lists_every_file_with_its_outcome() -> None:
    rows = _doc_rows()
    assert set(rows) == set(FILES)
    assert {f for f, outcome in rows.items() if outcome == "imported"} == set(IMPORTED)


@pytest.mark.parametrize("rel", IMPORTED)
def test_import_export_import_keeps_the_effective_training(rel: str) -> None:
    config, _ = import_kohya(_load(rel), rel)
    exported, _ = export_kohya(config)
    assert set(exported) == set(KOHYA_LORA_TAB)
    again, report = import_kohya(json.loads(kohya_to_json(exported)), "exported.json")
    assert effective(again) == effective(config)
    assert report.unsupported == [] and report.problems == _import_problems(rel)


def _import_problems(rel: str) -> list:
    return import_kohya(_load(rel), rel)[1].problems


# -- the CLI never shows a traceback -------------------------------------------------------------------------

MALFORMED = {
    "truncated.json": '{"LoRA_type": "Standard", "network_dim": ',
    "list.json": "[1, 2, 3]",
    "string.json": '"just text"',
    "number.json": "42",
    "null.json": "null",
    "empty.json": "",
    "empty-object.json": "{}",
    "nan.json": '{"LoRA_type": "Standard", "learning_rate": NaN}',
    "inf.json": '{"LoRA_type": "Standard", "network_dim": 1e999}',
    "nested.json": '{"a.png": {"caption": "x"}}',
    "list-value.json": '{"LoRA_type": "Standard", "network_dim": [8]}',
    "object-value.json": '{"LoRA_type": "Standard", "optimizer": {"name": "AdamW"}}',
    "bool-rate.json": '{"LoRA_type": "Standard", "learning_rate": true}',
    "bad-type.json": '{"LoRA_type": 5}',
    "unknown-only.json": '{"colour": "blue"}',
    "weird-args.json": '{"LoRA_type": "Standard", "optimizer_args": "=== ,, \\"\\" \'", "additional_parameters": "-- --=x ---y"}',
    "bom.json": '\ufeff{"LoRA_type": "Standard"}',
    "duplicate.json": '{"LoRA_type": "Standard", "LoRA_type": "LyCORIS/LoKr"}',
    "deep.json": "[" * 100000 + "]" * 100000,  # json.loads: RecursionError
    "deep-object.json": '{"a":' * 100000 + "1" + "}" * 100000,
    "huge-int.json": '{"LoRA_type": "Standard", "network_dim": ' + "9" * 5000 + "}",  # json.loads: ValueError (digit limit)
    "huge-numbers.json": '{"LoRA_type": "Standard", "network_dim": 1e308, "epoch": 99999999999999999999999}',
}


def _cases() -> list[tuple[str, Path | None]]:
    return [(f, ROOT / f) for f in FILES] + [(name, None) for name in MALFORMED]


@pytest.fixture
def source(request, tmp_path) -> Path:
    name, path = request.param
    if path is None:
        path = tmp_path / name
        path.write_text(MALFORMED.get(name, ""), encoding="utf-8")
    if name == "not-utf8.json":
        path.write_bytes(b'{"LoRA_type": "\xff"}')
    return path


@pytest.mark.parametrize("source", _cases() + [("not-utf8.json", None)], indirect=True, ids=lambda c: c[0])
def test_cli_commands_answer_every_file_without_a_traceback(source: Path, tmp_path, capsys) -> None:
    runs = [
        ["preset", "import-kohya", str(source), "-o", str(tmp_path / "ours.json")],
        ["preset", "export-kohya", str(source), "-o", str(tmp_path / "kohya.json")],
        ["preset", "show", str(source)],
        ["train", "--config", str(source), "--print-command"],
    ]
    for argv in runs:
        code = main(argv)  # anything but a UserError would raise here, i.e. a traceback in front of the user
        out = capsys.readouterr()
        assert code in (0, 2), argv
        assert "Traceback" not in out.out + out.err
        if code:  # one sentence saying why (train prints the import report first, as "import: " lines)
            errors = [line for line in out.err.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and len(errors[0]) > 20, argv


@pytest.mark.parametrize("rel", [f for f in FILES if isinstance(EXPECTED[f], str)])
def test_cli_refusal_is_the_first_line_and_exits_non_zero(rel: str, tmp_path, capsys) -> None:
    assert main(["preset", "import-kohya", str(ROOT / rel), "-o", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert EXPECTED[rel] in err[0]
    assert not (tmp_path / "o.json").exists()
