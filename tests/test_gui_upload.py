"""Dataset > Prepare folders from uploaded files or a zip (issue 24, a GUI on another machine): real zips built
here are received as the upload route receives them (data/upload.gather_upload into `<state>/upload/<id>/`; the
route itself: tests/test_upload_route.py) and feed the page's handler; hostile zips (`..`, absolute paths, links,
a bomb, too many or too large entries) are refused in one sentence with nothing written, and a prepared upload
is removed."""

from __future__ import annotations

import secrets
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from loratrainer.config import TrainingConfig
from tests.datasets import make_caption, make_image


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from loratrainer.gui.server import neutralise_gradio_env

    temp = neutralise_gradio_env()
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    blocks, ui = build_page("en", Jobs(tmp_path_factory.mktemp("state")), Display(temp / "display"))
    return ui


@pytest.fixture
def scratch(page) -> Path:
    """The server's upload folder (`<state>/upload`), so a test sees whether an upload was left behind."""
    from loratrainer.gui.upload_route import upload_root

    root = upload_root(page.jobs.state_dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def receive(scratch: Path, files: list) -> str:
    """An upload as the route leaves it: its files gathered (zips unpacked safely) into `<id>/dataset`; the id."""
    from loratrainer.data.upload import gather_upload

    upload_id = secrets.token_hex(16)
    (scratch / upload_id / "dataset").mkdir(parents=True)
    gather_upload(files, scratch / upload_id / "dataset")
    return upload_id


def form(ui, **named) -> dict:
    data = ui.show_config(TrainingConfig())
    defaults = {"prep_src": "", "prep_dest": "", "prep_name": "", "prep_repeats": "", "prep_reg": "", "prep_upload": ""}
    for name, value in {**defaults, **named}.items():
        data[ui.named[name]] = value
    return data


def image_zip(path: Path, src: Path, folder: str = "houses") -> Path:
    """A zip of `src`'s files under one top folder, as "Compress" / "Send to > Compressed folder" makes it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"{folder}/{f.name}")
    return path


def photos(root: Path, count: int = 3) -> Path:
    for i in range(count):
        make_caption(make_image(root / f"house {i}.png", color=(40 * i, 120, 200)), f"a small house, view {i}")
    (root / "party.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    return root


def test_a_zip_of_images_becomes_a_project(page, tmp_path, scratch):
    h, n, f = page.handlers["dataset"], page.named, page.fields
    z = image_zip(tmp_path / "houses.zip", photos(tmp_path / "photos"))
    out = h.prepare(form(page, prep_upload=receive(scratch, [z]), prep_dest=str(tmp_path / "project"), prep_name="house"))
    concept = tmp_path / "project" / "image" / "150_house"
    assert "Created" in out[n["prep_message"]], out[n["prep_message"]]
    assert sorted(p.name for p in concept.iterdir()) == sorted([f"house {i}.png" for i in range(3)] + [f"house {i}.txt" for i in range(3)])
    assert (concept / "house 1.txt").read_text() == "a small house, view 1"
    assert "party.gif" in out[n["prep_message"]] and "animation (GIF)" in out[n["prep_message"]]  # named, not copied
    assert out[f["folders.train_data_dir"]] == str(tmp_path / "project" / "image")
    assert list(scratch.iterdir()) == [] and out[n["prep_upload"]] == ""  # the prepared upload is removed, the box emptied
    # the same project again: never written into; the upload stays for a corrected project folder
    upload_id = receive(scratch, [z])
    out = h.prepare(form(page, prep_upload=upload_id, prep_dest=str(tmp_path / "project"), prep_name="house"))
    assert "already" in out[n["prep_message"]] and [p.name for p in scratch.iterdir()] == [upload_id]
    out = h.prepare(form(page, prep_upload=upload_id, prep_dest=str(tmp_path / "project2"), prep_name="house"))
    assert "Created" in out[n["prep_message"]] and list(scratch.iterdir()) == []


def test_loose_uploaded_files_become_a_project(page, tmp_path, scratch):
    h, n = page.handlers["dataset"], page.named
    src = photos(tmp_path / "photos", 2)
    out = h.prepare(form(page, prep_upload=receive(scratch, sorted(src.iterdir())), prep_dest=str(tmp_path / "p"), prep_name="dog", prep_repeats="10"))
    assert "2 image(s), 2 caption(s), 10 repeats" in out[n["prep_message"]]
    assert (tmp_path / "p" / "image" / "10_dog" / "house 0.png").is_file() and list(scratch.iterdir()) == []


def test_both_a_folder_and_an_upload_is_one_sentence(page, tmp_path, scratch):
    h, n = page.handlers["dataset"], page.named
    src = photos(tmp_path / "photos", 1)
    out = h.prepare(form(page, prep_src=str(src), prep_upload=receive(scratch, [src / "house 0.png"]), prep_dest=str(tmp_path / "p"), prep_name="x"))
    assert out == {n["prep_message"]: "Use either Your pictures or an upload, not both: clear one of them."}
    assert not (tmp_path / "p").exists()


def _hostile(path: Path, build) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.png", b"x")
        build(zf)
    return path


def _symlink(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("passwd.png")
    info.create_system = 3  # Unix: external_attr carries the mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, "/etc/passwd")


HOSTILE = {
    "dotdot": (lambda zf: zf.writestr("../../escaped.png", b"evil"), "would unpack outside its folder"),
    "absolute": (lambda zf: zf.writestr(zipfile.ZipInfo("/tmp/loratrainer-escaped.png"), b"evil"), "would unpack outside its folder"),
    "windows_dotdot": (lambda zf: zf.writestr("..\\escaped.png", b"evil"), "would unpack outside its folder"),
    "symlink": (_symlink, "is a link"),
    "bomb": (lambda zf: zf.writestr("zeros.png", bytes(32 * 1024 * 1024)), "expands"),  # 32 MB of zeros in ~32 KB
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_zip_is_refused_in_one_sentence_with_nothing_written(tmp_path, kind):
    from loratrainer.data.upload import gather_upload
    from loratrainer.errors import UserError
    from loratrainer.gui.i18n import Translator

    build, words = HOSTILE[kind]
    z = _hostile(tmp_path / "evil.zip", build)
    assert z.stat().st_size < 200_000
    into = tmp_path / "dataset"
    into.mkdir()
    with pytest.raises(UserError) as exc:
        gather_upload([z], into)
    text = Translator("en").error(exc.value)
    assert text.startswith("**Error:**") and "evil.zip" in text and words in text, text
    assert "nothing was unpacked" in text and "Traceback" not in text
    assert list(into.iterdir()) == [] and not (tmp_path / "escaped.png").exists()
    assert not Path("/tmp/loratrainer-escaped.png").exists()


def test_a_hostile_zip_is_refused_in_korean_too(tmp_path):
    from loratrainer.data.upload import unpack_zip
    from loratrainer.errors import UserError
    from loratrainer.gui.i18n import Translator

    z = _hostile(tmp_path / "evil.zip", HOSTILE["symlink"][0])
    with pytest.raises(UserError) as exc:
        unpack_zip(z, tmp_path / "out")
    assert exc.value.code == "upload.zip.link"
    assert "링크" in Translator("ko").error_text(exc.value) and "passwd.png" in Translator("ko").error_text(exc.value)


def test_too_many_or_too_large_entries_are_refused_before_anything_is_written(tmp_path):
    from loratrainer.data.upload import unpack_zip
    from loratrainer.errors import UserError

    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w") as zf:  # stored: sizes as declared, no compression ratio to trip on
        for i in range(6):
            zf.writestr(f"img{i}.png", bytes(1000))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match="holds 6 entries, more than 5") as exc:
        unpack_zip(z, out, max_members=5)
    assert exc.value.code == "upload.zip.too_many" and list(out.iterdir()) == []
    with pytest.raises(UserError, match="would unpack to") as exc:
        unpack_zip(z, out, max_bytes=4500)
    assert exc.value.code == "upload.zip.too_large" and list(out.iterdir()) == []
    assert len(unpack_zip(z, out)) == 6  # within the bounds it unpacks


def test_a_page_value_that_is_not_an_upload_id_names_nothing(page, tmp_path, scratch):
    """The upload box's value comes from the browser: only an id the route made is ever read, never a path."""
    h, n = page.handlers["dataset"], page.named
    src = photos(tmp_path / "photos", 1)
    for value in (str(src), "../" * 3 + "etc", "0" * 32):
        out = h.prepare(form(page, prep_upload=value, prep_dest=str(tmp_path / "p"), prep_name="x"))
        assert "no longer on the server" in out[n["prep_message"]] and not (tmp_path / "p").exists()


def test_with_listen_an_upload_lands_only_where_the_file_browser_reaches(page, tmp_path, scratch, monkeypatch):
    h, n = page.handlers["dataset"], page.named
    z = image_zip(tmp_path / "houses.zip", photos(tmp_path / "photos", 1))
    monkeypatch.setattr(page, "browse_limited", True)
    monkeypatch.setattr(page, "browse_folders", (str(tmp_path / "allowed"),))
    upload_id = receive(scratch, [z])
    out = h.prepare(form(page, prep_upload=upload_id, prep_dest=str(tmp_path / "elsewhere"), prep_name="house"))
    assert "uploads go only into a Project folder inside your home folder or a folder given with --browse-root" in out[n["prep_message"]]
    assert not (tmp_path / "elsewhere").exists()
    out = h.prepare(form(page, prep_upload=upload_id, prep_dest=str(tmp_path / "allowed" / "project"), prep_name="house"))
    assert "Created" in out[n["prep_message"]] and (tmp_path / "allowed" / "project" / "image" / "150_house" / "house 0.png").is_file()
