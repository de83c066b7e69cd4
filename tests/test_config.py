"""The settings schema: defaults, catalogue, cross-field rules, our JSON (round trip, migrations, old files)."""

from __future__ import annotations

import json
from pathlib import Path
from collections import Counter

import pytest

from loratrainer import config as cfg
from loratrainer.config import files as config_files
from loratrainer.config import (
    ConfigError,
    TrainingConfig,
    apply_overrides,
    config_from_dict,
    config_to_json,
    field_specs,
    load_config,
    save_config,
)


def test_defaults_are_valid_and_follow_kohya_where_the_issue_says() -> None:
    c = TrainingConfig()
    assert c.training.max_train_steps == 0  # = use epochs (Kohya's 1600 silently overrode them)
    assert c.dataset.caption_extension == ".txt"
    kohya_defaults = {
        "network_dim": 8, "network_alpha": 1, "optimizer": "AdamW8bit", "learning_rate": 1e-4, "unet_lr": 1e-4,
        "text_encoder_lr": 1e-4, "lr_scheduler": "cosine", "lr_warmup": 10, "train_batch_size": 1, "epoch": 1,
        "max_resolution": "512,512", "enable_bucket": True, "min_bucket_reso": 256, "max_bucket_reso": 2048,
        "bucket_reso_steps": 64, "bucket_no_upscale": True, "mixed_precision": "fp16", "save_precision": "fp16",
        "cache_latents": True, "clip_skip": 1, "max_token_length": 75, "save_every_n_epochs": 1, "seed": 0,
        "multires_noise_discount": 0.3, "num_cpu_threads_per_process": 2, "output_name": "last", "lora_type": "Standard",
    }
    assert {k: cfg.get_value(c, k) for k in kohya_defaults} == kohya_defaults


def test_leaf_names_are_unique_across_groups() -> None:
    counts = Counter(s.name for s in field_specs())
    assert [n for n, k in counts.items() if k > 1] == []


@pytest.mark.parametrize("spec", field_specs(), ids=lambda s: s.path)
def test_every_field_has_help_and_a_default_inside_its_range(spec: cfg.FieldSpec) -> None:
    assert spec.help.strip() and len(spec.help.splitlines()) == 1
    if spec.default is not None and spec.kind in ("int", "float"):
        assert spec.minimum is None or spec.default >= spec.minimum
        assert spec.maximum is None or spec.default <= spec.maximum
    if spec.choices is not None:
        assert spec.default in spec.choices


@pytest.mark.parametrize(
    "values, message",
    [
        ({"dataset": {"color_aug": True}}, "latents cannot be cached"),
        ({"dataset": {"random_crop": True}, "precision": {"cache_latents": False, "cache_latents_to_disk": True}}, "latents cannot be cached"),
        ({"optimizer": {"unet_lr": 0, "text_encoder_lr": 0}}, "nothing would be trained"),
        ({"buckets": {"min_bucket_reso": 1024, "max_bucket_reso": 512}}, "min_bucket_reso"),
        ({"precision": {"full_fp16": True, "mixed_precision": "bf16"}}, "full_fp16 needs"),
        ({"precision": {"full_bf16": True, "mixed_precision": "fp16"}}, "full_bf16 needs"),
        ({"launch": {"num_processes": 2, "gpu_ids": "0"}}, "gpu_ids"),
        ({"optimizer": {"lr_scheduler": "adafactor"}}, "works only with optimizer Adafactor"),
    ],
)
def test_cross_field_rules_reject_impossible_combinations(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


@pytest.mark.parametrize(
    "values",
    [
        {"dataset": {"color_aug": True}, "precision": {"cache_latents": False}},
        {"dataset": {"random_crop": True}, "precision": {"cache_latents": False}},
        {"optimizer": {"text_encoder_lr": 0}},
        {"optimizer": {"lr_scheduler": "adafactor", "optimizer": "Adafactor"}},
    ],
)
def test_allowed_combinations_load(values: dict) -> None:
    config_from_dict(values)


def test_text_encoder_lr_zero_is_a_unet_only_lora_and_the_summary_says_so() -> None:
    c = config_from_dict({"optimizer": {"text_encoder_lr": 0}})
    assert not c.trains_text_encoder and c.trains_unet
    assert any("UNet-only" in note for note in c.summary())
    assert not any("UNet-only" in note for note in TrainingConfig().summary())


@pytest.mark.parametrize(
    "rates, expected",
    [((1e-4, 1e-4, 1e-4), (True, True)), ((1e-4, 1e-4, 0.0), (True, False)), ((1e-4, 0.0, 5e-5), (False, True)),
     ((1e-4, None, None), (True, True)), ((0.0, None, 1e-4), (False, True))],
)
def test_parts_trained_follow_the_learning_rates(rates, expected) -> None:
    """A part whose learning rate resolves to 0 is not trained (nor saved); an empty per-part rate is the base."""
    lr, unet_lr, te_lr = rates
    c = TrainingConfig(optimizer=cfg.OptimizerSettings(learning_rate=lr, unet_lr=unet_lr, text_encoder_lr=te_lr))
    assert (c.trains_unet, c.trains_text_encoder) == expected


def test_empty_per_module_rate_falls_back_to_the_learning_rate() -> None:
    c = config_from_dict({"optimizer": {"learning_rate": 3e-4, "unet_lr": None}})
    assert c.effective_unet_lr == 3e-4


@pytest.mark.parametrize(
    "config",
    [TrainingConfig(), config_from_dict({"network": {"network_dim": 32, "lora_type": "LoCon"}, "sampling": {"sample_prompts": "a cat --w 512\nä dog"}})],
    ids=["defaults", "changed"],
)
def test_our_json_round_trips_byte_identical(tmp_path, config: TrainingConfig) -> None:
    first = tmp_path / "a.json"
    second = tmp_path / "b.json"
    save_config(config, first)
    save_config(load_config(first), second)
    assert first.read_bytes() == second.read_bytes()
    assert load_config(second) == config


def test_older_file_numeric_strings_coerced_and_missing_keys_default(tmp_path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema_version": 1, "optimizer": {"learning_rate": "1e-4", "epoch": "3"}, "model": {"max_token_length": "150"}}))
    c = load_config(path)
    assert (c.optimizer.learning_rate, c.training.epoch, c.model.max_token_length) == (1e-4, 3, 150)
    assert c.network == TrainingConfig().network


@pytest.mark.parametrize(
    "document, named",
    [
        ({"training": {"epoch": -1}}, "training.epoch"),
        ({"optimizer": {"learning_rate": "abc"}}, "optimizer.learning_rate"),
        ({"optimizer": {"lr": "abc"}}, "optimizer.lr: unknown setting"),
        ({"network": {"network_dim": 1.5}}, "network.network_dim"),
        ({"nonsense": {}}, "nonsense: unknown setting"),
    ],
)
def test_bad_values_and_unknown_keys_in_our_json_are_rejected_naming_the_key(document: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        config_from_dict(document, "old.json")


def test_malformed_json_is_an_error_naming_the_file(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"training": {"epoch": 3,,}}')
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        load_config(path)


def test_migrations_run_in_order_and_newer_files_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(cfg.schema, "SCHEMA_VERSION", 2)

    def rename_dim(doc: dict) -> dict:
        doc["network"] = {"network_dim": doc.pop("network", {}).pop("rank")}
        return doc

    monkeypatch.setattr(config_files, "MIGRATIONS", {1: rename_dim})
    migrated = cfg.migrate({"schema_version": 1, "network": {"rank": 16}})
    assert migrated == {"schema_version": 2, "network": {"network_dim": 16}}
    with pytest.raises(ConfigError, match="newer loratrainer"):
        cfg.migrate({"schema_version": 3})


V1 = Path(__file__).parent / "fixtures" / "loratrainer-v1"


def test_a_version_1_config_keeps_its_meaning_after_the_optimizer_group_split() -> None:
    """Schema 2 moved the run's length, noise and loss out of "optimizer": a file version 1 wrote (a whole
    run config, every moved setting away from its default) loads with the same values in their new groups."""
    old = json.loads((V1 / "full-config.json").read_text(encoding="utf-8"))
    assert old["schema_version"] == 1 and "seed" in old["optimizer"]
    c = load_config(V1 / "full-config.json")
    t, n, lo, o = c.training, c.noise, c.loss, c.optimizer
    assert (t.train_batch_size, t.epoch, t.max_train_steps, t.gradient_accumulation_steps, t.seed) == (3, 7, 900, 2, 1234)
    assert (n.noise_offset, n.multires_noise_iterations, n.multires_noise_discount, n.ip_noise_gamma) == (0.05, 6, 0.25, 0.1)
    assert (lo.min_snr_gamma, lo.loss_type, lo.huber_c, lo.huber_schedule) == (5.0, "huber", 0.2, "exponential")
    assert (o.optimizer, o.learning_rate, o.text_encoder_lr, o.lr_scheduler_num_cycles) == ("AdamW", 2e-4, 5e-5, 3)
    # every setting of the old file arrived somewhere: saving it again and reading both gives the same config
    assert load_config(V1 / "full-config.json") == config_from_dict(json.loads(config_to_json(c)))
    assert json.loads(config_to_json(c))["schema_version"] == cfg.SCHEMA_VERSION
    preset = load_config(V1 / "sd15-character.json")
    assert (preset.loss.min_snr_gamma, preset.optimizer.text_encoder_lr) == (5.0, 5e-5)


def test_a_file_without_a_version_in_the_old_layout_still_finds_the_groups() -> None:
    c = config_from_dict({"optimizer": {"seed": 7, "learning_rate": 3e-4, "noise_offset": 0.1, "loss_type": "smooth_l1"}})
    assert (c.training.seed, c.optimizer.learning_rate, c.noise.noise_offset, c.loss.loss_type) == (7, 3e-4, 0.1, "smooth_l1")


def test_set_overrides_accept_leaf_or_path() -> None:
    c = apply_overrides(TrainingConfig(), ["network_dim=32", "optimizer.learning_rate=5e-5", "output_name=my lora"])
    assert (c.network.network_dim, c.optimizer.learning_rate, c.folders.output_name) == (32, 5e-5, "my lora")


def test_config_to_json_is_grouped_and_versioned() -> None:
    doc = json.loads(config_to_json(TrainingConfig()))
    assert doc["schema_version"] == cfg.SCHEMA_VERSION
    assert set(doc) == {"schema_version", *cfg.GROUPS}


def test_settings_modules_import_in_any_order_and_the_package_re_exports_them() -> None:
    """Inside loratrainer/config/ imports point one way (no lazy import back): any module imported first in a
    fresh process works, and the package is the schema, its field catalogue and our JSON files."""
    import subprocess
    import sys

    for first in ("loratrainer.config.files", "loratrainer.config.fields", "loratrainer.config.kohya",
                  "loratrainer.config.presets", "loratrainer.config"):
        code = f"import {first}; from loratrainer.config import load_config, field_specs, TrainingConfig, ConfigError; field_specs()"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert cfg.load_config is config_files.load_config and cfg.ConfigError is config_files.ConfigError


@pytest.mark.parametrize("total, percent, expected", [(2400, 10, 240), (25, 10, 2), (15, 10, 2), (4, 10, 0), (7, 10, 1), (100, 0, 0)])
def test_warmup_percentage_gives_the_kohya_guis_step_count(total: int, percent: int, expected: int) -> None:
    """Kohya GUI: lr_warmup_steps = round(lr_warmup * max_train_steps / 100) (Python round: 2.5 -> 2, 1.5 -> 2)."""
    c = config_from_dict({"optimizer": {"lr_warmup": percent}})
    assert c.warmup_steps(total) == expected
    assert config_from_dict({"optimizer": {"lr_warmup": percent, "lr_warmup_steps": 5}}).warmup_steps(total) == 5


def test_the_form_and_a_kohya_file_read_a_loose_value_the_same_way() -> None:
    """Issue 25: one coerce (FieldSpec.coerce) for the page and the Kohya import: a dropdown's "150" and a file's
    "150" are the same 150, a number box's 32.0 and a file's "32" the same 32, an emptied text box is empty text."""
    from loratrainer.config.kohya import import_kohya
    from loratrainer.gui.form import values_to_config

    loose = {"max_token_length": "150", "network_dim": "32", "training_comment": ""}
    imported, _ = import_kohya(loose)
    page = values_to_config({"model.max_token_length": "150", "network.network_dim": 32.0, "metadata.training_comment": None})
    for path in ("model.max_token_length", "network.network_dim", "metadata.training_comment"):
        assert cfg.get_value(page, path) == cfg.get_value(imported, path) and type(cfg.get_value(page, path)) is type(cfg.get_value(imported, path))
    assert (page.model.max_token_length, page.network.network_dim, page.metadata.training_comment) == (150, 32, "")
    # what is no number stays as it was given, so the schema's error names the box ("enter a number"), and the
    # import says what is wrong in words
    with pytest.raises(cfg.ConfigError, match="network_dim: expected a whole number"):
        import_kohya({"network_dim": "3.5"})
    with pytest.raises(Exception) as page_error:
        values_to_config({"network.network_dim": 3.5})
    assert [f["path"] for f in page_error.value.fields] == ["network.network_dim"]


def test_rate_warnings_follow_the_optimizer_table() -> None:
    """Issue 25: the warnings before a run read the optimizer table (its max_lr, its adaptive flag), not a list of
    their own; which rate box is named is the one that holds the suspicious value."""
    from loratrainer.config.optimizer_table import OPTIMIZERS

    def warned(**optimizer) -> list[str]:
        return [str(m) for m in config_from_dict({"optimizer": optimizer}).warning_messages()]

    assert warned(optimizer="AdamW") == []
    assert warned(optimizer="AdamW", learning_rate=1.0) == [  # typed in a box the parts do not use: still a typo
        "optimizer.learning_rate is 1: far above what AdamW usually takes (at most about 0.01). Was a decimal comma typed (0,0001)?"]
    assert warned(optimizer="AdamW", unet_lr=5e-3) == [] and len(warned(optimizer="Lion", unet_lr=5e-3)) == 1  # Lion's limit is lower
    assert len(warned(optimizer="torch.optim.RAdam", text_encoder_lr=0.5)) == 1  # a module.Class path: AdamW's limit
    assert warned(optimizer="Adafactor", learning_rate=1.0, unet_lr=1.0, lr_scheduler="adafactor") == []  # it finds its own step
    adaptive = [name for name, entry in OPTIMIZERS.items() if entry.adaptive]
    assert set(adaptive) == {"Prodigy", "DAdaptAdam", "DAdaptLion"}
    for name in adaptive:
        assert warned(optimizer=name, learning_rate=1e-4, unet_lr=1.0, text_encoder_lr=1.0) == []  # Kohya's untouched base rate
        assert [m.split(" is ")[0] for m in warned(optimizer=name, learning_rate=1.0, unet_lr=1e-4, text_encoder_lr=None)] == ["optimizer.unet_lr"]
    assert warned(optimizer="AdamW", lr_scheduler="constant", lr_warmup_steps=10) == [
        "optimizer.lr_scheduler is constant, which has no warm-up: optimizer.lr_warmup_steps is ignored (choose constant_with_warmup)."]
