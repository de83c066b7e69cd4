"""Paths a config file brings (docs/reliability.md "Paths and faults"): a NUL byte or a 1.2 MB path in a config
file and a folder given as --config are one sentence from the CLI (they were tracebacks); a relative folder in an
imported Kohya file is resolved against that file's folder and shown before a run starts."""

from __future__ import annotations

import json
import os

import pytest

from loratrainer.cli import main


@pytest.mark.parametrize("value, says", [
    ("/tmp/out\0put", "folders.output_dir: the text holds a NUL character, which no path or setting may hold"),
    ("/tmp/" + "a" * 1_200_000, "folders.output_dir: the path is 1200005 bytes long; no path may be longer than 4096 bytes"),
])
@pytest.mark.parametrize("layout", ["ours", "kohya"])
def test_a_nul_or_an_endless_path_in_a_config_file_is_one_sentence(value, says, layout, tmp_path, capsys):
    data = {"folders": {"output_dir": value}} if layout == "ours" else {"output_dir": value, "LoRA_type": "Standard"}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    for argv in (["train", "--config", str(path)], ["queue", "add", str(path)]):
        os.environ["LORATRAINER_CONFIG_DIR"] = str(tmp_path / "home")
        try:
            assert main(argv) == 2
        finally:
            del os.environ["LORATRAINER_CONFIG_DIR"]
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1] == f"error: {path} is not a valid config file ({says}): choose a .json config file"
    assert not (tmp_path / "home" / "queue.json").exists()


def test_a_folder_as_config_is_one_sentence(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "IsADirectoryError" not in err
    assert err.strip() == f"error: {tmp_path} is not a regular file (a folder, device or pipe): choose a .json config file"


def test_relative_folders_of_a_kohya_file_are_its_folders_and_shown(tmp_path, monkeypatch):
    """`../../../etc/cron.d` as the logging folder was kept relative to wherever the CLI or GUI ran."""
    from loratrainer.config.presets import load_any_config

    folder = tmp_path / "kohya" / "configs"
    folder.mkdir(parents=True)
    path = folder / "k.json"
    path.write_text(json.dumps({"LoRA_type": "Standard", "logging_dir": "../../../etc/cron.d", "output_dir": "out",
                                "train_data_dir": "/abs/img"}))
    monkeypatch.chdir(tmp_path)
    config, report = load_any_config(path)
    assert config.folders.logging_dir == os.path.normpath(folder / "../../../etc/cron.d") == str(tmp_path.parent / "etc" / "cron.d")
    assert config.folders.output_dir == str(folder / "out") and config.folders.train_data_dir == "/abs/img"
    lines = "\n".join(report.lines())
    assert f"folders.logging_dir: ../../../etc/cron.d was relative to the Kohya file's folder: {config.folders.logging_dir}" in lines


def test_a_caption_that_is_a_fifo_or_a_link_to_dev_zero_is_named_and_the_check_not_ready(tmp_path):
    """Both were "missing or empty" (the folder-name fallback) and the check said ready; the FIFO must not hang."""
    from loratrainer.config import TrainingConfig, with_values
    from loratrainer.data.check import check_dataset
    from loratrainer.gui.i18n import Translator
    from tests import datasets as ds
    from tests.hang_guard import deadline

    root = ds.make_dataset(tmp_path / "img", {"10_dog": 3})
    for n in range(3):
        (root / "10_dog" / f"img_00{n}.txt").unlink(missing_ok=True)
    os.mkfifo(root / "10_dog" / "img_000.txt")
    (root / "10_dog" / "img_001.txt").symlink_to("/dev/zero")
    (root / "10_dog" / "img_002.txt").write_text("a dog")
    with deadline(30):
        report = check_dataset(with_values(TrainingConfig(), {"folders.train_data_dir": str(root)}))
    errors = sorted((str(p.path), str(p.message)) for p in report.problems if p.severity == "error")
    said = "the caption is not a regular file (a pipe, a device or a link to one): replace it with a text file"
    assert not report.ok and errors == [(str(root / "10_dog" / "img_000.txt"), said), (str(root / "10_dog" / "img_001.txt"), said)]
    ko = Translator("ko").message(next(p for p in report.problems if p.severity == "error").msg)
    assert "일반 파일이 아닙니다" in ko
