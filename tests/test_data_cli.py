"""`loratrainer check` and `loratrainer prepare`: output fields, exit codes, copies-not-moves, refusals."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loratrainer.cli import check as check_cli
from loratrainer.cli import prepare as prepare_cli
from loratrainer.config import TrainingConfig, save_config
from loratrainer.data.prepare import suggest_repeats
from loratrainer.errors import UserError
from tests import datasets as ds

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> int:
    """Parse and run one of our sub-commands as loratrainer.cli.main does (UserError -> its exit code)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    check_cli.add_parser(sub)
    prepare_cli.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def test_check_json_fields_and_exit_code(tmp_path, capsys):
    ds.make_dataset(tmp_path / "img", {"20_dog": [(640, 384)] * 2, "5_cat": [(512, 512)]})
    assert _run(["check", str(tmp_path / "img"), "--json", "--batch-size", "2", "--epochs", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 3 and data["samples_per_epoch"] == 45
    assert data["buckets"] == {"512x512": 5, "640x384": 40}
    assert data["steps_per_epoch"] == 3 + 20 and data["total_steps"] == 69 and data["problems"] == []
    ds.make_dataset(tmp_path / "img", {"0_bad": 1})
    assert _run(["check", str(tmp_path / "img"), "--json"]) == check_cli.EXIT_REFUSED
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert problems[0]["severity"] == "error" and problems[0]["path"].endswith("0_bad")


def test_check_reads_config_file_and_overrides(tmp_path, capsys):
    ds.make_dataset(tmp_path / "img", {"10_dog": 2})
    ds.make_dataset(tmp_path / "reg", {"1_dog": 30})
    config = TrainingConfig()
    config.folders.train_data_dir = str(tmp_path / "img")
    config.training.gradient_accumulation_steps = 4
    save_config(config, tmp_path / "run.json")
    assert _run(["check", "--config", str(tmp_path / "run.json"), "--reg", str(tmp_path / "reg"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["samples_per_epoch"] == 40 and data["steps_per_epoch"] == 10
    assert _run(["check", "--config", str(tmp_path / "run.json"), "--set", "max_train_steps=7"]) == 0
    assert "= 7 total" in capsys.readouterr().out


def test_check_usage_errors_exit_2(tmp_path, capsys):
    assert _run(["check"]) == 2
    assert _run(["check", str(tmp_path), "--batch-size", "0"]) == 2
    assert "train_batch_size" in capsys.readouterr().err


def test_check_process_starts_without_torch(tmp_path):
    ds.make_dataset(tmp_path / "img", {"3_x": 1})
    code = "import sys; from loratrainer.cli import main; rc = main(sys.argv[1:]); assert 'torch' not in sys.modules; sys.exit(rc)"
    out = subprocess.run([sys.executable, "-c", code, "check", str(tmp_path / "img"), "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["images"] == 1


@pytest.mark.parametrize("n,expected", [(1, 150), (10, 150), (12, 140), (15, 125), (18, 110), (20, 100), (300, 100)])
def test_repeats_suggestion(n, expected):
    assert suggest_repeats(n) == expected


def _source(tmp_path: Path, n: int = 12) -> Path:
    src = tmp_path / "raw photos"
    for i in range(n):
        img = ds.make_image(src / f"p{i:02d}.jpg", (96, 64))
        if i % 2 == 0:
            ds.make_caption(img, f"photo {i}")
    ds.make_junk(src)
    return src


def test_prepare_copies_into_kohya_layout(tmp_path, capsys):
    src = _source(tmp_path)
    before = sorted((p.name, p.read_bytes()) for p in src.iterdir())
    reg = ds.make_concept(tmp_path, "regs", 3, captions=False)
    dest = tmp_path / "project"
    assert _run(["prepare", str(src), str(dest), "--name", "Zoë dog", "--reg", str(reg), "--reg-repeats", "2"]) == 0
    out = capsys.readouterr().out
    concept = dest / "image" / "140_Zoë dog"  # 12 images -> 140 repeats suggested
    assert sorted(p.name for p in concept.iterdir()) == sorted(
        [f"p{i:02d}.jpg" for i in range(12)] + [f"p{i:02d}.txt" for i in range(0, 12, 2)]
    )
    assert len(list((dest / "reg" / "2_Zoë dog").iterdir())) == 3
    assert (dest / "log").is_dir() and (dest / "model").is_dir()
    assert sorted((p.name, p.read_bytes()) for p in src.iterdir()) == before  # copied, never moved
    assert not [p for p in dest.rglob(".staging-*")]
    assert "next: loratrainer check" in out and "--reg" in out and "repeats 140 suggested for 12 images" in out
    assert _run(["check", str(dest / "image"), "--reg", str(dest / "reg")]) == 0


def test_prepare_refusals_change_nothing(tmp_path, capsys):
    src = _source(tmp_path, 3)
    dest = tmp_path / "project"
    assert _run(["prepare", str(src), str(dest), "--name", "dog", "--repeats", "20"]) == 0
    snapshot = sorted(str(p) for p in dest.rglob("*"))
    refusals = [
        ["prepare", str(src), str(dest), "--name", "dog", "--repeats", "20"],  # target exists
        ["prepare", str(src), str(dest), "--name", "dog", "--repeats", "30"],  # same concept, other repeats
        ["prepare", str(src), str(dest), "--name", "../evil"],
        ["prepare", str(src), str(dest), "--name", "a/b"],
        ["prepare", str(src), str(dest), "--name", ".."],
        ["prepare", str(src), str(src), "--name", "x"],  # same folder
        ["prepare", str(src), str(src / "sub"), "--name", "x"],  # DEST inside SRC
        ["prepare", str(src), str(tmp_path), "--name", "x"],  # SRC inside DEST
        ["prepare", str(tmp_path / "missing"), str(dest), "--name", "x"],
        ["prepare", str(dest / "log"), str(tmp_path / "p2"), "--name", "x"],  # no images
    ]
    for argv in refusals:
        assert _run(argv) == 2, argv
    assert sorted(str(p) for p in dest.rglob("*")) == snapshot
    assert not (src / "sub").exists() and not (tmp_path / "p2" / "image").exists()
    err = capsys.readouterr().err
    assert "already exists" in err and "same folder" in err and "inside" in err


def test_prepare_failed_copy_leaves_no_staging(tmp_path, monkeypatch):
    src = _source(tmp_path, 4)
    before = sorted(os.listdir(src))
    import loratrainer.data.prepare as prep

    calls = {"n": 0}
    real_copy = prep.shutil.copy2

    def failing_copy(a, b):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_copy(a, b)

    monkeypatch.setattr(prep.shutil, "copy2", failing_copy)
    with pytest.raises(UserError, match="nothing was created"):
        prep.prepare_project(src, tmp_path / "proj", "dog", 10)
    assert list((tmp_path / "proj" / "image").iterdir()) == []
    assert sorted(os.listdir(src)) == before  # the source is untouched


def test_check_accepts_kohya_gui_config(tmp_path, capsys):
    kohya = REPO / "tests" / "fixtures" / "kohya-presets" / "saved-locon-AdamW8bit.json"
    ds.make_dataset(tmp_path / "img", {"10_dog": 2})
    assert _run(["check", str(tmp_path / "img"), "--config", str(kohya), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2
    assert _run(["check", str(tmp_path / "img"), "--config", str(kohya)]) == 0
    captured = capsys.readouterr()
    assert "as a Kohya GUI config" in captured.err and "NOT SUPPORTED" in captured.err  # it says so
    assert "ready to train" in captured.out


@pytest.mark.parametrize("in_the_way", ["", "image", "log", "reg"])
def test_prepare_refuses_a_file_where_a_folder_must_go(tmp_path, capsys, in_the_way):
    """DEST (or DEST/image, log, reg) being a file is a one-line error, never a traceback, and creates nothing."""
    src = _source(tmp_path, 2)
    reg = ds.make_concept(tmp_path, "regs", 1, captions=False)
    dest = tmp_path / "project"
    blocker = dest / in_the_way if in_the_way else dest
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a user's file")
    before = sorted(tmp_path.rglob("*"))
    assert _run(["prepare", str(src), str(dest), "--name", "dog", "--repeats", "5", "--reg", str(reg)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert blocker.read_text() == "a user's file"
    assert sorted(tmp_path.rglob("*")) == before  # nothing was created


def test_prepare_with_class_names_folders_as_kohyas_tool(tmp_path, capsys):
    """Kohya's folder tool: image/<repeats>_<instance> <class>/ and reg/<repeats>_<class>/, so uncaptioned reg
    images train as the class ("dog"), never as the trigger name."""
    src = _source(tmp_path, 3)
    reg = ds.make_concept(tmp_path, "regs", 2, captions=False)
    dest = tmp_path / "project"
    assert _run(["prepare", str(src), str(dest), "--name", "zoë", "--class", "dog", "--repeats", "20", "--reg", str(reg)]) == 0
    assert "give --class" not in capsys.readouterr().out
    assert sorted(p.name for p in (dest / "image").iterdir()) == ["20_zoë dog"]
    assert sorted(p.name for p in (dest / "reg").iterdir()) == ["1_dog"]
    assert _run(["check", str(dest / "image"), "--reg", str(dest / "reg"), "--json"]) == 0
    capsys.readouterr()
    from loratrainer.data.check import check_dataset

    config = TrainingConfig()
    config.folders.train_data_dir, config.folders.reg_data_dir = str(dest / "image"), str(dest / "reg")
    assert {s.caption for s in check_dataset(config).samples if s.is_reg} == {"dog"}
    assert _run(["prepare", str(src), str(tmp_path / "p2"), "--name", "x", "--class", "a/b"]) == 2
    assert "--class" in capsys.readouterr().err and not (tmp_path / "p2").exists()


def test_prepare_reg_without_class_says_what_the_reg_captions_are(tmp_path, capsys):
    src = _source(tmp_path, 3)
    reg = ds.make_concept(tmp_path, "regs", 2, captions=False)
    assert _run(["prepare", str(src), str(tmp_path / "project"), "--name", "zoë", "--reg", str(reg)]) == 0
    assert "give --class" in capsys.readouterr().out


def test_prepare_names_what_it_leaves_out_and_why(tmp_path, capsys):
    """Issue 22: a GIF, a stray caption, a PDF and a sub-folder are not copied, and each is named with why."""
    src = ds.make_concept(tmp_path, "photos", 2, captions="a photo")
    (src / "party.gif").write_bytes(b"GIF89a")
    (src / "notes.txt").write_text("no image called notes")
    (src / "scan.pdf").write_bytes(b"%PDF-1.4")
    (src / "more").mkdir()
    (src / ".DS_Store").write_bytes(b"junk")  # junk stays silent
    assert _run(["prepare", str(src), str(tmp_path / "project"), "--name", "x", "--repeats", "5"]) == 0
    out = capsys.readouterr().out
    left = sorted(line for line in out.splitlines() if line.startswith("left out "))
    assert left == [
        "left out more: a folder: only the files directly in the chosen folder are copied",
        "left out notes.txt: a caption file without an image of the same name",
        "left out party.gif: an animation (GIF): training reads still images only (png, jpg, jpeg, webp, bmp); save a frame as PNG to use it",
        "left out scan.pdf: not an image type training reads (png, jpg, jpeg, webp, bmp)",
    ], out
    assert sorted(p.name for p in (tmp_path / "project" / "image" / "5_x").iterdir()) == ["img_000.png", "img_000.txt", "img_001.png", "img_001.txt"]
