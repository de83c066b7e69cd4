"""Issue 24, a GUI on another machine: Dataset > Prepare folders from a zip uploaded through the page (the real
server, its web guards and the Dataset tab's own upload route, in headless Chromium): a zip of photos larger than
Gradio's 4 MB upload limit arrives with progress and becomes a new project folder, and a zip with a `../` entry is
refused in one sentence under the upload box, with nothing kept on the server."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.browser.test_gui_browser import (  # noqa: F401  (server and browser are fixtures)
    box, browser, expect_text, field, open_accordion, server, set_value, shot, wait_idle, wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from tests.datasets import make_caption, make_image

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("gui-upload")
    with zipfile.ZipFile(root / "houses.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            image = make_image(root / "photos" / f"house {i}.png", (64, 64), color=(40 * i, 120, 200))
            if i == 0:  # a photo-sized picture that does not compress: the zip is over the old 4 MB limit
                pixels = np.random.default_rng(0).integers(0, 256, (1536, 1536, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(image, compress_level=0)
            make_caption(image, f"a small house, view {i}")
            zf.write(image, f"houses/{image.name}")
            zf.write(image.with_suffix(".txt"), f"houses/{image.stem}.txt")
    assert (root / "houses.zip").stat().st_size > 6 * 1024 * 1024
    with zipfile.ZipFile(root / "evil.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(root / "photos" / "house 0.png", "house 0.png")
        zf.writestr("../../escaped.png", b"evil")
    return root


def upload(page, path: Path, expect: str) -> str:
    page.locator("#prep-upload input[type=file]").set_input_files(str(path))
    status = page.locator("#prep-upload .lt-upload-status")
    wait_until(lambda: expect in status.inner_text(), 60, f"{expect!r} under the upload box", page)
    return status.inner_text()


def open_prepare(browser, server: str, locale: str):
    """A new browser context in `locale` on the page, with Dataset's "Prepare folders" open."""
    context = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    open_accordion(page, "prepare")
    return context, page


def test_upload_a_zip_into_a_new_project_and_a_hostile_zip_is_refused(server, browser, workspace):
    context, page = open_prepare(browser, server, "en-US")
    # the route's limit and the server's free space are said before anything is chosen
    wait_until(lambda: "At most 2048 MB per upload" in page.locator("#prep-upload").inner_text(), 30, "the upload limit said", page)
    text = upload(page, workspace / "houses.zip", "Received")
    assert "3 image(s), 3 caption(s)" in text, text
    received = workspace / "home" / ".cache" / "loratrainer" / "upload"  # the server's state folder (its HOME is ours)
    assert len(list(received.iterdir())) == 1
    set_value(box(page, "prep-dest"), workspace / "project")
    set_value(box(page, "prep-name"), "house")
    page.locator("#prep-button").click()
    expect_text(page, "#prep-message", "Created")
    concept = workspace / "project" / "image" / "150_house"
    assert "3 image(s), 3 caption(s)" in page.locator("#prep-message").inner_text()
    assert sorted(p.name for p in concept.iterdir()) == sorted([f"house {i}.png" for i in range(3)] + [f"house {i}.txt" for i in range(3)])
    wait_until(lambda: field(page, "folders.train_data_dir").input_value() == str(workspace / "project" / "image"), 30, "the image folder filled in", page)
    shot(page, "dataset-upload")

    assert "Received" not in page.locator("#prep-upload").inner_text() and list(received.iterdir()) == []  # used up

    text = upload(page, workspace / "evil.zip", "would unpack outside its folder")
    assert "evil.zip" in text and "../../escaped.png" in text and "nothing was unpacked" in text and "\n" not in text.strip()
    shot(page, "dataset-upload-refused")
    set_value(box(page, "prep-dest"), workspace / "evil-project")
    page.locator("#prep-button").click()  # nothing was received: Prepare folders asks for pictures
    expect_text(page, "#prep-message", "Fill in")
    assert not (workspace / "evil-project").exists() and not (workspace.parent / "escaped.png").exists()
    assert list(received.iterdir()) == []
    context.close()

    # the Korean page says the limit, the progress and the refusal in Korean
    context, page = open_prepare(browser, server, "ko-KR")
    wait_until(lambda: "업로드 한 번에 최대 2048 MB" in page.locator("#prep-upload").inner_text(), 30, "the upload limit said in Korean", page)
    text = upload(page, workspace / "evil.zip", "업로드 거부")
    assert "evil.zip" in text and "../../escaped.png" in text, text
    assert list(received.iterdir()) == []
    context.close()
