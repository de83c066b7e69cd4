"""Shipped and user presets, load_any_config, and the `loratrainer preset` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratrainer.cli import main
from loratrainer.config import ConfigError, TrainingConfig, config_to_json, get_value, load_config, save_config, with_values
from loratrainer.config.presets import (
    USER_FIELDS,
    apply_preset,
    list_presets,
    load_any_config,
    load_preset,
    preset_to_json,
    read_json_object,
    save_user_preset,
    shipped_preset_dir,
)

# Kohya GUI files that import (iA3-Prodigy-sd15.json beside them is refused: test_kohya_rules.py; loha-sd15.json
# imports as LoHa: test_kohya_lycoris.py)
KOHYA_FIXTURES = [Path(__file__).parent / "fixtures" / "kohya-presets" / n for n in ("saved-locon-AdamW8bit.json", "sd15-EDG_LoraOptiSettings.json")]
SHIPPED = sorted(shipped_preset_dir().glob("*.json"))


@pytest.fixture(autouse=True)
def user_presets(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "user-presets"
    monkeypatch.setenv("LORATRAINER_PRESET_DIR", str(folder))
    return folder


def test_the_three_presets_of_the_issue_are_shipped() -> None:
    assert {"sd15-style", "sd15-character", "sd15-low-vram"} <= {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_preset_loads_and_is_canonical(path: Path) -> None:
    config = load_preset(path)
    header = read_json_object(path)["preset"]
    assert header["name"] and header["description"]
    assert preset_to_json(config, header["name"], header["description"]) == path.read_text(encoding="utf-8")
    for field in USER_FIELDS:  # a preset never carries the user's paths
        assert get_value(config, field) == get_value(TrainingConfig(), field)


@pytest.mark.parametrize(
    "name, promises",
    [
        ("sd15-low-vram", {"train_batch_size": 1, "gradient_checkpointing": True, "optimizer": "AdamW8bit", "cache_latents": True, "mixed_precision": "fp16"}),
        ("sd15-character", {"flip_aug": False, "keep_tokens": 1}),
        ("sd15-style", {"flip_aug": True, "network_dim": 64}),
    ],
)
def test_presets_do_what_their_description_promises(name: str, promises: dict) -> None:
    config = load_preset(name)
    assert {k: get_value(config, k) for k in promises} == promises


def test_the_three_sdxl_presets_are_shipped_for_sdxl() -> None:
    stems = {p.stem for p in SHIPPED}
    assert {"sdxl-character", "sdxl-style", "sdxl-low-vram"} <= stems
    for stem in ("sdxl-character", "sdxl-style", "sdxl-low-vram"):
        config = load_preset(stem)
        # the model must be SDXL (the launcher refuses another family) and it trains at SDXL's size
        assert config.model.model_family == "sdxl" and config.buckets.resolution == (1024, 1024)
        assert (config.buckets.min_bucket_reso, config.buckets.max_bucket_reso) == (256, 2048)
        assert config.buckets.bucket_reso_steps % 32 == 0  # sdxl_train_network.py verify_bucket_reso_steps(32)
        # the savings every SDXL preset relies on (sd-scripts' SDXL LoRA recipes)
        assert config.precision.gradient_checkpointing and config.caches_latents
        assert config.precision.no_half_vae  # SDXL's own VAE overflows in fp16 (black latents)
    for stem in ("sd15-character", "sd15-style", "sd15-low-vram"):
        assert load_preset(stem).model.model_family == "auto"  # the SD1.5 presets are unchanged


@pytest.mark.parametrize(
    "name, promises",
    [
        ("sdxl-low-vram", {"train_batch_size": 1, "fp8_base": True, "text_encoder_lr": 0.0, "cache_text_encoder_outputs": True,
                           "optimizer": "Adafactor", "mixed_precision": "fp16", "network_dim": 16}),
        ("sdxl-style", {"mixed_precision": "bf16", "full_bf16": True, "text_encoder_lr": 0.0, "cache_text_encoder_outputs": True,
                        "flip_aug": True, "shuffle_caption": False}),
        ("sdxl-character", {"mixed_precision": "bf16", "optimizer": "AdamW8bit", "flip_aug": False, "keep_tokens": 1, "cache_text_encoder_outputs": False}),
    ],
)
def test_sdxl_presets_do_what_their_description_promises(name: str, promises: dict) -> None:
    config = load_preset(name)
    assert {k: get_value(config, k) for k in promises} == promises


@pytest.mark.parametrize("stem", ["sdxl-style", "sdxl-low-vram"])
def test_cached_text_encoder_outputs_only_where_sd_scripts_allows_them(stem: str) -> None:
    # sdxl_train_network.py assert_extra_args: cached TE outputs need network_train_unet_only, and captions that do
    # not change between epochs (no shuffle, no dropout)
    config = load_preset(stem)
    assert not config.trains_text_encoder
    assert not config.dataset.shuffle_caption and config.dataset.caption_dropout_rate == 0


def test_character_preset_trains_the_text_encoder_slower_than_the_unet() -> None:
    config = load_preset("SD1.5 character or face")  # by display name
    assert 0 < config.effective_text_encoder_lr < config.effective_unet_lr


def test_list_presets_shows_shipped_then_user(user_presets: Path) -> None:
    save_user_preset(with_values(TrainingConfig(), {"network_dim": 4}), "My tiny", "rank 4")
    infos = list_presets()
    assert [i.shipped for i in infos] == sorted((i.shipped for i in infos), reverse=True)
    mine = [i for i in infos if not i.shipped]
    assert [(i.name, i.description, i.path.parent) for i in mine] == [("My tiny", "rank 4", user_presets)]


def test_user_preset_round_trip_and_no_silent_overwrite(user_presets: Path) -> None:
    config = with_values(TrainingConfig(), {"network_dim": 24, "train_data_dir": "/data/img", "learning_rate": 2e-4})
    path = save_user_preset(config, "faces v2")
    loaded = load_preset("faces v2")
    assert loaded.network.network_dim == 24 and loaded.optimizer.learning_rate == 2e-4
    assert loaded.folders.train_data_dir == ""  # paths stay with the user, not the preset
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="exists"):
        save_user_preset(with_values(TrainingConfig(), {"network_dim": 4}), "faces v2")
    assert path.read_bytes() == before
    save_user_preset(with_values(TrainingConfig(), {"network_dim": 4}), "faces v2", overwrite=True)
    assert load_preset("faces v2").network.network_dim == 4
    with pytest.raises(ConfigError, match="shipped preset"):
        save_user_preset(config, "sd15-style")


def test_apply_preset_keeps_the_users_folders_and_model() -> None:
    mine = with_values(
        TrainingConfig(),
        {"train_data_dir": "/p/image", "output_dir": "/p/model", "logging_dir": "/p/log", "output_name": "house",
         "pretrained_model_name_or_path": "/models/dreamshaper.safetensors", "network_dim": 4},
    )
    result = apply_preset(mine, load_preset("sd15-low-vram"))
    assert result.folders == mine.folders
    assert result.model.pretrained_model_name_or_path == "/models/dreamshaper.safetensors"
    assert result.network.network_dim == 16 and result.precision.gradient_checkpointing


def test_unknown_preset_names_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="sd15-style"):
        load_preset("no such preset")


# -- load_any_config ------------------------------------------------------------------------------------------


def test_load_any_config_reads_our_json_byte_identical_round_trip(tmp_path) -> None:
    path = tmp_path / "ours.json"
    save_config(with_values(TrainingConfig(), {"network_dim": 32, "sample_prompts": "a house --w 512"}), path)
    config, report = load_any_config(path)
    assert report.format == "loratrainer" and not report.unsupported
    assert config_to_json(config).encode() == path.read_bytes()


@pytest.mark.parametrize("path", KOHYA_FIXTURES, ids=lambda p: p.name)
def test_load_any_config_recognises_kohya_files(path: Path) -> None:
    config, report = load_any_config(path)
    assert report.format == "kohya" and "Kohya GUI" in report.lines()[0]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_load_any_config_reads_presets(path: Path) -> None:
    config, report = load_any_config(path)
    assert report.format == "loratrainer" and config == load_preset(path)


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"), ('{"epoch": -1}', "epoch"), ('{"optimizer": {"lr": 1}}', "optimizer.lr: unknown setting")],
)
def test_load_any_config_errors_name_the_problem(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_any_config(path)


# -- CLI ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KOHYA_FIXTURES, ids=lambda p: p.name)
def test_cli_import_kohya_writes_our_config_and_prints_the_report(tmp_path, capsys, path: Path) -> None:
    out = tmp_path / "ours.json"
    assert main(["preset", "import-kohya", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert load_config(out) == load_any_config(path)[0]
    assert "Kohya GUI" in printed and f"Wrote {out}" in printed
    if "LyCORIS/LoHa" in path.read_text():  # a LoHa is trained as LoHa (docs/lycoris.md) and the rename is said
        assert "LoRA_type: 'LyCORIS/LoHa' -> lora_type 'LoHa'" in printed and load_config(out).network.lora_type == "LoHa"


def test_cli_refuses_to_overwrite_without_force(tmp_path, capsys) -> None:
    out = tmp_path / "ours.json"
    out.write_text("keep me")
    source = str(KOHYA_FIXTURES[0])
    assert main(["preset", "import-kohya", source, "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["preset", "import-kohya", source, "-o", str(out), "--force"]) == 0
    load_config(out)


def test_cli_malformed_input_is_an_error_and_changes_nothing(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"learning_rate": 1e-4,')
    out = tmp_path / "ours.json"
    assert main(["preset", "import-kohya", str(bad), "-o", str(out)]) == 2
    assert "not valid JSON" in capsys.readouterr().err and not out.exists()
    existing = tmp_path / "existing.json"
    existing.write_text("old")
    assert main(["preset", "import-kohya", str(bad), "-o", str(existing), "--force"]) == 2
    assert existing.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "existing.json"]  # no temp files left


def test_cli_rejected_value_names_the_key(tmp_path, capsys) -> None:
    src = tmp_path / "old.json"
    src.write_text(json.dumps({"learning_rate": "1e-4", "epoch": -1}))
    assert main(["preset", "import-kohya", str(src), "-o", str(tmp_path / "o.json")]) == 2
    assert "epoch" in capsys.readouterr().err


def test_cli_export_kohya_then_import_again(tmp_path, capsys) -> None:
    ours = tmp_path / "ours.json"
    save_config(with_values(TrainingConfig(), {"lora_type": "LoCon", "network_dim": 16, "undersized_images": "refuse"}), ours)
    kohya = tmp_path / "kohya.json"
    assert main(["preset", "export-kohya", str(ours), "-o", str(kohya)]) == 0
    printed = capsys.readouterr().out
    assert "NOT EXPORTED: undersized_images" in printed
    data = json.loads(kohya.read_text())
    assert list(data) == sorted(data) and data["LoRA_type"] == "Kohya LoCon" and data["network_dim"] == 16
    assert main(["preset", "export-kohya", str(ours), "-o", str(kohya)]) == 2
    back = tmp_path / "back.json"
    assert main(["preset", "import-kohya", str(kohya), "-o", str(back)]) == 0
    assert load_config(back) == with_values(load_config(ours), {"undersized_images": "skip"})


def test_cli_list_and_show(capsys) -> None:
    assert main(["preset", "list"]) == 0
    listed = capsys.readouterr().out
    assert "sd15-low-vram" in listed and "[shipped]" in listed
    assert main(["preset", "show", "sd15-low-vram"]) == 0
    shown = capsys.readouterr().out
    assert "precision.gradient_checkpointing = True" in shown and "6-8 GB" in shown
    assert main(["preset", "show", "nope"]) == 2


def test_pyproject_installs_presets_and_lists_every_package() -> None:
    """Shipped presets must be found after a non-editable install: presets/ is packaged as loratrainer._presets."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    setuptools_cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = setuptools_cfg.get("packages")
    # a failure, not a skip: without this an installed loratrainer ships no presets
    assert isinstance(packages, list) and "loratrainer._presets" in packages, "pyproject.toml must package presets/ as loratrainer._presets"
    assert setuptools_cfg["package-dir"]["loratrainer._presets"] == "presets"
    assert "*.json" in setuptools_cfg["package-data"]["loratrainer._presets"]
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in (root / "loratrainer").rglob("__init__.py")}
    assert on_disk <= set(packages), "add new package folders to [tool.setuptools] packages in pyproject.toml"


@pytest.mark.parametrize("command", ["import-kohya", "export-kohya"])
def test_cli_unwritable_output_is_one_error_line(tmp_path, capsys, command) -> None:
    """An output path under a file (or any OS refusal) is an error naming the path, never a traceback."""
    source = tmp_path / "ours.json"
    save_config(TrainingConfig(), source)
    (tmp_path / "afile").write_text("keep")
    out = tmp_path / "afile" / "x.json"
    assert main(["preset", command, str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and str(out) in err and "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "keep"


def test_cli_show_reads_kohya_files_and_full_configs(tmp_path, capsys) -> None:
    """show takes any config file (it says every command does): a Kohya file is imported and reported, and a full
    config lists only what differs from the defaults."""
    kohya = Path(__file__).parent / "fixtures" / "kohya_ss" / "test" / "config" / "locon-Prodigy.json"
    assert main(["preset", "show", str(kohya)]) == 0
    shown = capsys.readouterr().out
    assert "as a Kohya GUI config" in shown and "NOT SUPPORTED" in shown and "MUST BE CHANGED" in shown
    assert "optimizer.optimizer = 'Prodigy'" in shown and "network.lora_type = 'LoCon'" in shown
    full = tmp_path / "full.json"
    save_config(with_values(TrainingConfig(), {"network_dim": 12}), full)
    assert main(["preset", "show", str(full)]) == 0
    shown = capsys.readouterr().out
    assert "network.network_dim = 12" in shown and "metadata_license" not in shown


def test_overwriting_keeps_a_backup_of_the_old_file(tmp_path, user_presets: Path, capsys) -> None:
    """docs/reliability.md: what the user asks to overwrite is backed up (presets and --force outputs alike)."""
    old = save_user_preset(with_values(TrainingConfig(), {"network_dim": 24}), "faces")
    old_bytes = old.read_bytes()
    save_user_preset(with_values(TrainingConfig(), {"network_dim": 4}), "faces", overwrite=True)
    (backup,) = user_presets.glob("faces.json.*.bak")
    assert backup.read_bytes() == old_bytes and load_preset("faces").network.network_dim == 4
    assert [i.name for i in list_presets() if not i.shipped] == ["faces"]  # backups are not listed as presets
    out = tmp_path / "ours.json"
    out.write_text("my hand-edited file")
    source = Path(__file__).parent / "fixtures" / "kohya-presets" / "saved-locon-AdamW8bit.json"
    assert main(["preset", "import-kohya", str(source), "-o", str(out), "--force"]) == 0
    (kept,) = tmp_path.glob("ours.json.*.bak")
    assert kept.read_text() == "my hand-edited file" and f"as {kept}" in capsys.readouterr().out
