"""Bad input before a run starts (docs/reliability.md, "Input files" and "Settings"): hostile or broken config
files, oversized captions, a resolution that drops every image, booleans given as numbers. Each is one clear
sentence naming the setting or file, in English and on a Korean page, and never a traceback or a hang."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from loratrainer.config import ConfigError, TrainingConfig, config_from_dict, load_config, with_values
from loratrainer.data.check import check_dataset
from loratrainer.gui.i18n import Translator
from tests import datasets as ds



def korean(exc: BaseException) -> str:
    text = Translator("ko").error_text(exc)
    assert any("\uac00" <= ch <= "\ud7a3" for ch in text), text
    return text


def _load_within(path: Path, seconds: float) -> BaseException:
    """load_config(path) in a thread: it must answer (with ConfigError) within `seconds`."""
    result: list[BaseException] = []

    def go():
        try:
            load_config(path)
        except BaseException as exc:  # noqa: BLE001 - the test inspects whatever it was
            result.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"load_config({path}) still running after {seconds} s"
    assert result, "load_config accepted it"
    assert time.monotonic() - started < seconds
    return result[0]


def test_load_config_refuses_dev_zero_without_reading_it_all():
    exc = _load_within(Path("/dev/zero"), 5)
    assert isinstance(exc, ConfigError) and "not a regular file" in str(exc)
    korean(exc)


def test_load_config_does_not_block_on_a_fifo(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    exc = _load_within(fifo, 5)  # before: open() waited for a writer, for ever
    assert isinstance(exc, ConfigError) and "not a regular file" in str(exc)


def test_load_config_refuses_a_huge_file(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"model": {"vae": "' + "x" * (3 * 1024 * 1024) + '"}}')
    exc = _load_within(big, 10)
    assert isinstance(exc, ConfigError) and "larger than 2 MB" in str(exc)
    korean(exc)


@pytest.mark.parametrize("text,detail", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"training": {"epoch": ' + "9" * 5000 + "}}", "digits"),
])
def test_deep_json_and_huge_integers_are_not_a_valid_config(tmp_path, text, detail):
    path = tmp_path / "evil.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "is not a valid config file" in str(info.value) and detail in str(info.value)
    korean(info.value)


@pytest.mark.parametrize("section,key", [("training", "epoch"), ("network", "network_dim"), ("optimizer", "learning_rate"), ("optimizer", "unet_lr")])
def test_a_boolean_is_not_a_number(tmp_path, section, key):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({section: {key: True}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{section}.{key}: expected a number, not true/false" in str(info.value)
    assert TrainingConfig.model_validate({section: {key: 2}})  # numbers still load
    text = korean(info.value)
    assert "true" in text


def test_a_boolean_is_not_a_number_in_a_version_1_file_either(tmp_path):
    """Version 1 kept epoch under "optimizer"; the file is migrated before the check, which names the new place."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schema_version": 1, "optimizer": {"epoch": True}}))
    with pytest.raises(ConfigError, match="training.epoch: expected a number, not true/false"):
        load_config(path)


def test_booleans_still_load_where_booleans_belong():
    assert config_from_dict({"buckets": {"enable_bucket": False}}).buckets.enable_bucket is False


def _dataset_config(root: Path, **values) -> TrainingConfig:
    return with_values(TrainingConfig(), {"folders.train_data_dir": str(root), **values})


def test_an_oversized_caption_is_a_named_problem_and_is_not_read_whole(tmp_path):
    root = ds.make_dataset(tmp_path / "img", {"10_dog": 2})
    huge = root / "10_dog" / "img_000.txt"
    with open(huge, "wb") as fh:  # 50 MB, sparse: the check must not read it into memory
        fh.truncate(50 * 1024 * 1024)
    (root / "10_dog" / "img_001.txt").write_text("a dog")
    report = check_dataset(_dataset_config(root))
    errors = [p for p in report.problems if p.severity == "error"]
    assert not report.ok and len(errors) == 1
    assert str(errors[0].path) == str(huge) and "51200 KB" in str(errors[0].message)
    ko = Translator("ko").message(errors[0].msg)
    assert "캡션" in ko


def test_max_resolution_below_min_bucket_reso_is_refused_with_the_real_cause(tmp_path):
    root = ds.make_dataset(tmp_path / "img", {"10_dog": [(640, 384), (512, 512)]})
    report = check_dataset(_dataset_config(root, **{"buckets.max_resolution": "64,64"}))
    assert not report.ok
    errors = [p for p in report.problems if p.severity == "error"]
    assert [str(p.path) for p in errors] == ["buckets.max_resolution"]
    assert "below buckets.min_bucket_reso (256)" in str(errors[0].message)
    skipped = [str(p.message) for p in report.problems if "640x384" in str(p.message)]
    assert skipped and "too small" not in skipped[0] and "raise buckets.max_resolution" in skipped[0]
    ko = Translator("ko").message(errors[0].msg)
    assert "최대 해상도" in ko and "최소 버킷 해상도" in ko  # the settings as the Korean page labels them
    # a sane resolution passes
    assert check_dataset(_dataset_config(root, **{"buckets.max_resolution": "512,512"})).ok
