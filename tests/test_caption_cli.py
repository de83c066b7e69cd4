"""`loratrainer caption` without a model: exit codes, refusals, basic captioning and edits."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loratrainer.cli import main
from tests.datasets import make_caption, make_image, make_truncated_jpeg
from tests.tmpfs import mounted_tmpfs


def test_basic_text_with_prefix_skips_existing_and_exits_0(tmp_path, capsys):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    make_caption(tmp_path / "b.png", "mine")
    assert main(["caption", str(tmp_path), "--basic", "a photo", "--prefix", "sks"]) == 0
    assert (tmp_path / "a.txt").read_text() == "sks a photo\n" and (tmp_path / "b.txt").read_text() == "mine"
    out = capsys.readouterr().out
    assert "1 captions written" in out and "1 skipped: caption exists" in out


def test_duplicate_stems_exit_2_and_name_both_files(tmp_path, capsys):
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), "--basic", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1  # one line, no traceback
    assert str(tmp_path / "a.jpg") in err and str(tmp_path / "a.png") in err
    assert not list(tmp_path.glob("*.txt"))


def test_unreadable_image_listed_and_run_still_succeeds(tmp_path, capsys):
    make_image(tmp_path / "good.png")
    make_truncated_jpeg(tmp_path / "bad.jpg")
    assert main(["caption", str(tmp_path), "--basic", "x", "--caption-extension", "caption"]) == 0
    out = capsys.readouterr().out
    assert "bad.jpg" in out and (tmp_path / "good.caption").exists()


def test_overwrite_keeps_a_backup(tmp_path, capsys):
    make_caption(make_image(tmp_path / "a.png"), "old")
    assert main(["caption", str(tmp_path), "--basic", "new", "--overwrite"]) == 0
    assert (tmp_path / "a.txt").read_text() == "new\n"
    assert [p.read_text() for p in (tmp_path / ".caption-backups").rglob("a.txt")] == ["old"]
    assert "backed up to" in capsys.readouterr().out


def test_find_replace_and_add_to_existing(tmp_path, capsys):
    make_caption(make_image(tmp_path / "a.png"), "a dog")
    assert main(["caption", str(tmp_path), "--find", "dog", "--replace", "cat"]) == 0
    assert main(["caption", str(tmp_path), "--add-to-existing", "--prefix", "sks"]) == 0
    assert (tmp_path / "a.txt").read_text() == "sks a cat\n"
    assert "1 captions changed" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["--find", "x"],  # no --replace
    ["--replace", "x"],  # no --find
    ["--add-to-existing"],  # nothing to add
    ["--basic", "x", "--batch-size", "0"],
    ["--basic", "x", "--caption-extension", "../evil"],
    ["--num-beams", "0"],
])
def test_user_errors_exit_2(tmp_path, capsys, argv):
    make_image(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not list(tmp_path.glob("*.txt"))


def test_missing_folder_exit_2(tmp_path, capsys):
    assert main(["caption", str(tmp_path / "nope"), "--basic", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_basic_runs_do_not_import_torch(tmp_path):
    make_image(tmp_path / "a.png")
    code = (f"import sys; from loratrainer.cli import main; rc = main(['caption', {str(tmp_path)!r}, '--basic', 'x']); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-3:] == ["0", "False", "False"]


def test_basic_without_text_is_refused(tmp_path, capsys):
    make_image(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), "--basic", " "]) == 2
    assert "the fixed text is empty" in capsys.readouterr().err


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs mounted for the test (what a full USB stick or partition does)."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk


def _fill_leaving_pages(disk, pages: int) -> None:
    """Fill the file system, then free exactly `pages` pages."""
    import os

    filler = disk / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, size - size % 4096 - 4096 * pages)
    st = os.statvfs(disk)
    assert st.f_bavail * st.f_frsize == 4096 * pages, "tmpfs page accounting"


def test_full_disk_while_writing_is_one_line_and_the_old_caption_stays(small_disk, capsys):
    make_image(small_disk / "a.png")
    make_caption(small_disk / "a.png", "old caption")
    # one free page: the backup copy of a.txt fits, the new caption's temporary file does not
    _fill_leaving_pages(small_disk, 1)
    assert main(["caption", str(small_disk), "--basic", "new", "--overwrite"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write the caption") and "No space left" in errors[0]
    assert (small_disk / "a.txt").read_text() == "old caption"  # the write really failed, and replaced nothing
    assert [p.read_text() for p in (small_disk / ".caption-backups").rglob("a.txt")] == ["old caption"]
    assert not list(small_disk.glob(".*.partial")), "the temporary file is removed"


def test_full_disk_with_no_old_caption_leaves_no_file(small_disk, capsys):
    make_image(small_disk / "a.png")
    _fill_leaving_pages(small_disk, 0)
    assert main(["caption", str(small_disk), "--basic", "new"]) == 2
    assert "No space left" in capsys.readouterr().err
    assert not (small_disk / "a.txt").exists() and not list(small_disk.glob(".*.partial"))


def test_backup_that_cannot_be_made_replaces_nothing(tmp_path, capsys, monkeypatch):
    from loratrainer.caption import writer

    def denied(root):
        raise PermissionError(13, "Permission denied")

    make_caption(make_image(tmp_path / "a.png"), "old")
    monkeypatch.setattr(writer, "new_backup_dir", denied)
    for argv in (["--basic", "new", "--overwrite"], ["--find", "old", "--replace", "new"]):
        assert main(["caption", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot back up") and "none was replaced" in err and err.count("\n") == 1
        assert (tmp_path / "a.txt").read_text() == "old"


@pytest.mark.parametrize("captioner", ["blip", "git"])
def test_max_length_0_is_refused_not_replaced_by_the_default(tmp_path, capsys, captioner):
    make_image(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), "--captioner", captioner, "--max-length", "0"]) == 2
    assert "max length must be at least 1" in capsys.readouterr().err
