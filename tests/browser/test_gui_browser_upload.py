"""Issue 24, a GUI on another machine: Dataset > Prepare folders from a zip uploaded through the page (the real
server, its web guards and Gradio's upload route, in headless Chromium): a zip of images becomes a new project
folder, and a zip with a `../` entry is refused in one sentence with nothing created."""

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

    root = tmp_path_factory.mktemp("gui-upload")
    with zipfile.ZipFile(root / "houses.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            image = make_image(root / "photos" / f"house {i}.png", (64, 64), color=(40 * i, 120, 200))
            make_caption(image, f"a small house, view {i}")
            zf.write(image, f"houses/{image.name}")
            zf.write(image.with_suffix(".txt"), f"houses/{image.stem}.txt")
    with zipfile.ZipFile(root / "evil.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(root / "photos" / "house 0.png", "house 0.png")
        zf.writestr("../../escaped.png", b"evil")
    return root


def upload(page, path: Path) -> None:
    clear = page.locator("#prep-upload button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator("#prep-upload input[type=file]").set_input_files(str(path))
    wait_until(lambda: path.name in page.locator("#prep-upload").inner_text(), 30, f"{path.name} listed as uploaded", page)
    wait_idle(page)


def test_upload_a_zip_into_a_new_project_and_a_hostile_zip_is_refused(server, browser, workspace):
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    open_accordion(page, "prepare")
    assert "at most 4 MB per upload" in page.locator("#prep-upload-help").inner_text()  # the limit is said
    upload(page, workspace / "houses.zip")
    set_value(box(page, "prep-dest"), workspace / "project")
    set_value(box(page, "prep-name"), "house")
    page.locator("#prep-button").click()
    expect_text(page, "#prep-message", "Created")
    concept = workspace / "project" / "image" / "150_house"
    assert "3 image(s), 3 caption(s)" in page.locator("#prep-message").inner_text()
    assert sorted(p.name for p in concept.iterdir()) == sorted([f"house {i}.png" for i in range(3)] + [f"house {i}.txt" for i in range(3)])
    wait_until(lambda: field(page, "folders.train_data_dir").input_value() == str(workspace / "project" / "image"), 30, "the image folder filled in", page)
    shot(page, "dataset-upload")

    upload(page, workspace / "evil.zip")
    assert "houses.zip" not in page.locator("#prep-upload").inner_text()  # replaced, not added to
    set_value(box(page, "prep-dest"), workspace / "evil-project")
    page.locator("#prep-button").click()
    expect_text(page, "#prep-message", "would unpack outside its folder")
    text = page.locator("#prep-message").inner_text()
    assert "evil.zip" in text and "../../escaped.png" in text and "nothing was unpacked" in text
    assert not (workspace / "evil-project").exists() and not (workspace.parent / "escaped.png").exists()
    context.close()
