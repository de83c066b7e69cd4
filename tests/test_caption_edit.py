"""Basic captioning edits (find/replace, prefix/postfix on existing captions) and the caption editor API."""

from __future__ import annotations

import pytest

from loratrainer.caption import basic, editor
from loratrainer.caption.writer import BACKUP_DIR_NAME
from loratrainer.errors import UserError
from tests.datasets import make_caption, make_image


@pytest.fixture
def folder(tmp_path):
    for name, text in [("a", "1girl, red hair, smile"), ("b", "1girl, blue hair"), ("c", "dog, smile")]:
        make_caption(make_image(tmp_path / f"{name}.png"), text)
    make_image(tmp_path / "d.png")  # no caption
    return tmp_path


def test_find_replace_changes_only_matching_captions_and_backs_them_up(folder):
    report = basic.find_replace(folder, "1girl", "1woman")
    assert sorted(p.name for p in report.changed) == ["a.txt", "b.txt"] and report.unchanged == 1
    assert (folder / "a.txt").read_text() == "1woman, red hair, smile\n"
    assert (folder / "c.txt").read_text() == "dog, smile"  # untouched, byte for byte
    assert (report.backup_dir / "a.txt").read_text() == "1girl, red hair, smile"
    assert report.backup_dir.parent == folder / BACKUP_DIR_NAME
    assert not (folder / "d.txt").exists()


def test_find_replace_literal_text_and_regex(folder):
    basic.find_replace(folder, "hair", r"\1 locks")  # literal: the backslash is kept, not a group reference
    assert (folder / "b.txt").read_text() == "1girl, blue \\1 locks\n"
    basic.find_replace(folder, r"(\w+) \\1 locks", r"\1 hair", regex=True)
    assert (folder / "b.txt").read_text() == "1girl, blue hair\n"
    with pytest.raises(UserError):
        basic.find_replace(folder, "", "x")
    with pytest.raises(UserError, match="regular expression"):
        basic.find_replace(folder, "(", "x", regex=True)


def test_add_prefix_postfix_is_idempotent(folder):
    basic.add_prefix_postfix(folder, "sks", "style")
    assert (folder / "c.txt").read_text() == "sks dog, smile style\n"
    again = basic.add_prefix_postfix(folder, "sks", "style")
    assert again.changed == [] and again.backup_dir is None
    assert (folder / "c.txt").read_text() == "sks dog, smile style\n"


def test_crlf_and_bom_normalised_when_a_caption_is_rewritten(tmp_path):
    make_caption(make_image(tmp_path / "w.png"), "old text\nsecond line", bom=True, newline="\r\n")
    basic.find_replace(tmp_path, "old", "new")
    assert (tmp_path / "w.txt").read_bytes() == b"new text\nsecond line\n"


def test_editor_pages_list_images_with_captions(folder):
    first = editor.list_page(folder, page=1, page_size=3)
    assert (first.page, first.pages, first.total) == (1, 2, 4)
    assert [(i.image.name, i.caption) for i in first.items] == [
        ("a.png", "1girl, red hair, smile"), ("b.png", "1girl, blue hair"), ("c.png", "dog, smile")]
    last = editor.list_page(folder, page=99, page_size=3)
    assert last.page == 2
    assert [(i.image.name, i.caption, i.caption_file.name) for i in last.items] == [("d.png", "", "d.txt")]
    found = editor.list_page(folder, query="SMILE")
    assert [i.image.name for i in found.items] == ["a.png", "c.png"]


def test_editor_save_is_atomic_and_stays_inside_the_folder(folder, tmp_path_factory):
    path = editor.save_caption(folder, folder / "d.png", "a cat\r\non a mat ")
    assert path == folder / "d.txt" and path.read_bytes() == b"a cat\non a mat\n"
    assert editor.save_caption(folder, "a.png", "x").read_text() == "x\n"  # relative to the folder
    assert not list(folder.glob(".*.partial"))
    outside = make_image(tmp_path_factory.mktemp("other") / "e.png")
    for bad in [outside, folder / ".." / outside.parent.name / "e.png", folder / "a.txt", folder / "zz.png"]:
        with pytest.raises(UserError):
            editor.save_caption(folder, bad, "nope")
    assert not (outside.parent / "e.txt").exists()


def test_editor_search_replace_and_tag_frequency(folder):
    assert editor.tag_frequency(folder) == [("1girl", 2), ("smile", 2), ("blue hair", 1), ("dog", 1), ("red hair", 1)]
    editor.search_replace(folder, "smile", "grin")
    assert dict(editor.tag_frequency(folder))["grin"] == 2
