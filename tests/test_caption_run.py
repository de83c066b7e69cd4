"""caption_folder's rules, with a recording captioner: no model, so every rule is checked in milliseconds."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from loratrainer.caption import (
    CaptionRunOptions,
    DuplicateStemsError,
    FixedTextOptions,
    caption_folder,
    plan_captions,
)
from loratrainer.caption.writer import BACKUP_DIR_NAME
from loratrainer.errors import UserError
from tests.datasets import make_caption, make_image, make_junk, make_rgba_transparent_red, make_truncated_jpeg


class Recorder:
    """A captioner that says which image it saw (by size) and remembers the batches it got."""

    def __init__(self) -> None:
        self.batches: list[list[Image.Image]] = []

    def caption(self, images: list[Image.Image]) -> list[str]:
        self.batches.append(images)
        return [f"  a  {im.width}x{im.height}\nphoto " for im in images]


def run(folder: Path, captioner=None, **kw):
    return caption_folder(CaptionRunOptions(folder, **kw), FixedTextOptions("x"), captioner=captioner or Recorder())


def test_captions_written_with_prefix_and_postfix_joined_by_single_spaces(tmp_path):
    make_image(tmp_path / "a.png", (40, 30))
    make_image(tmp_path / "b.JPG", (20, 10))
    report = run(tmp_path, prefix=" sks ", postfix="style ")
    assert (tmp_path / "a.txt").read_bytes() == b"sks a 40x30 photo style\n"  # UTF-8, no BOM, "\n"
    assert (tmp_path / "b.txt").read_text() == "sks a 20x10 photo style\n"
    assert sorted(p.name for p in report.written) == ["a.txt", "b.txt"]
    assert report.summary()[0] == "2 captions written"


def test_existing_caption_byte_identical_and_reported_skipped(tmp_path):
    make_image(tmp_path / "x.png")
    make_image(tmp_path / "y.png")
    original = make_caption(tmp_path / "x.png", "my hand-written caption\r\n", bom=True).read_bytes()
    report = run(tmp_path)
    assert (tmp_path / "x.txt").read_bytes() == original
    assert report.skipped_existing == [tmp_path / "x.png"]
    assert "1 skipped: caption exists" in "\n".join(report.summary())
    assert [p.name for p in report.written] == ["y.txt"]
    assert not (tmp_path / BACKUP_DIR_NAME).exists()


def test_empty_caption_counts_as_missing_and_is_filled(tmp_path):
    make_image(tmp_path / "x.png")
    make_caption(tmp_path / "x.png", "  \n")
    report = run(tmp_path)
    assert report.skipped_existing == []
    assert (tmp_path / "x.txt").read_text().startswith("a 64x64")


def test_caption_with_text_only_after_an_empty_first_line_is_kept(tmp_path):
    make_image(tmp_path / "x.png")
    original = make_caption(tmp_path / "x.png", "\nnotes on the second line\n").read_bytes()
    report = run(tmp_path)
    assert (tmp_path / "x.txt").read_bytes() == original and report.skipped_existing == [tmp_path / "x.png"]
    report = run(tmp_path, overwrite=True)
    assert (report.backup_dir / "x.txt").read_bytes() == original


def test_overwrite_backs_up_old_captions_first(tmp_path):
    make_image(tmp_path / "x.png")
    make_caption(tmp_path / "x.png", "old words")
    report = run(tmp_path, overwrite=True)
    assert (tmp_path / "x.txt").read_text() == "a 64x64 photo\n"
    assert report.backup_dir is not None and report.backup_dir.parent == tmp_path / BACKUP_DIR_NAME
    assert (report.backup_dir / "x.txt").read_text() == "old words"
    # a second overwrite gets its own backup folder: the first backup is never replaced
    second = run(tmp_path, overwrite=True)
    assert second.backup_dir != report.backup_dir
    assert (report.backup_dir / "x.txt").read_text() == "old words"


def test_backup_is_written_durably_before_the_caption_is_replaced(tmp_path, monkeypatch):
    from loratrainer.caption import writer

    writes, real = [], writer.atomic_write
    monkeypatch.setattr(writer, "atomic_write", lambda path, data, **kw: writes.append(path) or real(path, data, **kw))
    make_image(tmp_path / "x.png")
    make_caption(tmp_path / "x.png", "old words")
    report = run(tmp_path, overwrite=True)
    assert writes == [report.backup_dir / "x.txt", tmp_path / "x.txt"]
    assert (report.backup_dir / "x.txt").read_text() == "old words"


def test_duplicate_stems_refused_before_anything_is_written(tmp_path):
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    with pytest.raises(DuplicateStemsError) as err:
        run(tmp_path)
    assert str(tmp_path / "a.jpg") in str(err.value) and str(tmp_path / "a.png") in str(err.value)
    assert isinstance(err.value, UserError)
    assert not list(tmp_path.glob("*.txt"))
    assert plan_captions(CaptionRunOptions(tmp_path)).duplicates == [[tmp_path / "a.jpg", tmp_path / "a.png"]]


def test_unreadable_images_skipped_and_listed_the_rest_captioned(tmp_path):
    make_image(tmp_path / "good.png")
    make_truncated_jpeg(tmp_path / "broken.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    make_junk(tmp_path)
    report = run(tmp_path, batch_size=4)
    assert [p.name for p in report.written] == ["good.txt"]
    assert sorted(s.path.name for s in report.failed) == ["broken.jpg", "empty.png"]
    assert "2 skipped: not captioned" in report.summary()
    assert not (tmp_path / "broken.txt").exists()


def test_captioner_sees_transparency_on_white_background(tmp_path):
    make_rgba_transparent_red(tmp_path / "t.png")
    rec = Recorder()
    run(tmp_path, captioner=rec)
    assert rec.batches[0][0].getpixel((0, 0)) == (255, 255, 255)


def test_batches_progress_and_cancel(tmp_path):
    for i in range(5):
        make_image(tmp_path / f"{i}.png")
    rec, seen, stop = Recorder(), [], threading.Event()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if done >= 2:
            stop.set()

    report = caption_folder(CaptionRunOptions(tmp_path, batch_size=2), FixedTextOptions(), captioner=rec,
                            progress=progress, cancel=stop.is_set)
    assert [len(b) for b in rec.batches] == [2]
    assert seen == [(0, 5), (2, 5)] and report.cancelled and len(report.written) == 2
    assert "cancelled" in report.summary()[-1]


def test_recursive_reaches_subfolders_but_not_backups(tmp_path):
    make_image(tmp_path / "top.png")
    make_image(tmp_path / "sub" / "deep.png")
    make_image(tmp_path / BACKUP_DIR_NAME / "old" / "hidden.png")
    assert [p.name for p in run(tmp_path).written] == ["top.txt"]
    assert [p.name for p in run(tmp_path, recursive=True).written] == ["deep.txt"]


def test_fixed_text_captioner_goes_through_the_same_rules(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    make_caption(tmp_path / "b.png", "keep me")
    report = caption_folder(CaptionRunOptions(tmp_path, prefix="sks"), FixedTextOptions("a photo of a dog"))
    assert (tmp_path / "a.txt").read_text() == "sks a photo of a dog\n"
    assert (tmp_path / "b.txt").read_text() == "keep me" and len(report.skipped_existing) == 1


@pytest.mark.parametrize(
    "ext, ok", [("txt", ".txt"), (".caption", ".caption"), ("../x", None), (".t/x", None), ("", None)]
)
def test_caption_extension_checked(tmp_path, ext, ok):
    if ok:
        assert CaptionRunOptions(tmp_path, caption_extension=ext).caption_extension == ok
    else:
        with pytest.raises(UserError):
            CaptionRunOptions(tmp_path, caption_extension=ext)


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run(tmp_path / "nope")
    with pytest.raises(UserError, match="choose the image folder"):  # an empty box is not the current folder
        CaptionRunOptions("  ")


def test_hidden_files_are_not_images_for_captioning_as_for_training(tmp_path):
    from loratrainer.data.folders import scan_data_dir

    folder = tmp_path / "10_cat"
    for name in ("a.png", ".b.png", "._c.png"):
        make_image(folder / name)
    assert [p.name for p in run(folder).written] == ["a.txt"]
    assert [p.name for p in scan_data_dir(tmp_path, ".txt").concepts[0].images] == ["a.png"]


def test_the_model_is_announced_once_and_only_when_there_is_work(tmp_path):
    announced = []
    make_image(tmp_path / "a.png")
    make_caption(tmp_path / "a.png", "kept")
    caption_folder(CaptionRunOptions(tmp_path), FixedTextOptions("x"), loading=announced.append)
    assert announced == []  # nothing to caption: nothing is loaded
    caption_folder(CaptionRunOptions(tmp_path, overwrite=True), FixedTextOptions("x"), loading=announced.append)
    assert announced == [FixedTextOptions("x")]


def test_out_of_gpu_memory_becomes_advice_and_keeps_what_was_written(tmp_path):
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name, as the run recognises it
        pass

    class FailsSecond(Recorder):
        def caption(self, images):
            if self.batches:
                raise OutOfMemoryError("CUDA out of memory")
            return super().caption(images)

    for i in range(4):
        make_image(tmp_path / f"{i}.png")
    with pytest.raises(UserError, match="lower the batch size"):
        run(tmp_path, captioner=FailsSecond(), batch_size=2)
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["0.txt", "1.txt"]


def test_captioner_sees_what_training_sees_and_a_bomb_is_skipped(tmp_path):
    """docs/reliability.md rows 3, 5 and 6 for captioning: upright, RGB colours, 8 bit; a decompression bomb is listed."""
    import numpy as np

    from tests.datasets import make_16bit_ramp, make_bomb_png, make_cmyk_jpeg, make_exif_rotated_jpeg

    make_exif_rotated_jpeg(tmp_path / "a_rotated.jpg", stored=(60, 40), orientation=6)
    make_16bit_ramp(tmp_path / "b_ramp.png")
    make_cmyk_jpeg(tmp_path / "c_cmyk.jpg")
    make_bomb_png(tmp_path / "d_bomb.png")
    rec = Recorder()
    report = run(tmp_path, captioner=rec, batch_size=4)
    rotated, ramp, cmyk = rec.batches[0]
    assert rotated.size == (40, 60)
    assert ramp.mode == "RGB" and len(np.unique(np.asarray(ramp)[..., 0])) > 200
    r, g, b = cmyk.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60
    assert [s.path.name for s in report.failed] == ["d_bomb.png"] and len(report.written) == 3
