"""The real GUI in headless Chromium, driving the real trainer (docs/reliability.md, "Tests that prove it").

Opens the page, prepares a generated dataset, loads a preset, points the model at a tiny SD1.5 folder, starts
training, sees progress, reloads the page and finds the run again, sees a sample image, stops, and sees
"stopped" and the -interrupted LoRA on the Results tab. Captions a folder on Utilities > Captioning (the
fixed-text captioner: no model), edits one caption in the caption editor and finds it saved on disk. Then the
Korean page, with a broken dataset's problems in Korean. Screenshots of every tab go to
test-artifacts/screenshots/ (and to docs/img/ with LORATRAINER_DOCS_SCREENSHOTS=1, for the user guide), each
taken once Gradio shows no pending overlay (a half-loaded page looks greyed out).

Needs Debian's chromium (/usr/bin/chromium, `apt-get install chromium fonts-noto-cjk`); Playwright's own
browser download is not used.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.gui_server import start_gui, stop_gui

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("LORATRAINER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
DOCS_IMG = ROOT / "docs" / "img"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: CI must `apt-get install -y chromium fonts-noto-cjk`")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from loratrainer.compat import hide_broken_torchvision

    hide_broken_torchvision()
    from tests.datasets import make_caption, make_image
    from tests.tiny_sd import save_tiny_diffusers

    root = tmp_path_factory.mktemp("gui-e2e")
    save_tiny_diffusers(root / "tiny-sd")
    for i, size in enumerate([(64, 64), (96, 64), (64, 96), (64, 64)]):
        image = make_image(root / "photos" / f"house {i}.png", size, color=(40 * i, 120, 200 - 40 * i))
        make_caption(image, f"a small house, view {i}")
    for i in range(3):  # no captions yet: Utilities > Captioning writes them
        make_image(root / "to-caption" / f"cat {i}.png", (64, 64), color=(200, 60 * i, 40))
    make_image(root / "broken" / "10_dog" / "dog.png", (64, 64))
    (root / "broken" / "10_dog" / "empty.png").write_bytes(b"")
    (root / "broken" / "no_prefix").mkdir()
    return root


@pytest.fixture(scope="module")
def server(workspace):
    """`loratrainer gui` as users start it, with its own HOME (run registry) and preset folder."""
    home = workspace / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "LORATRAINER_PRESET_DIR": str(workspace / "user-presets"), "PYTHONUNBUFFERED": "1"}
    proc, url = start_gui(env=env, log=workspace / "gui.log")
    yield url
    stop_gui(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


# Gradio's status tracker: a `div.wrap` with the variant class (default/center); `hide` while nothing is pending.
PENDING = """() => [...document.querySelectorAll('div.wrap.default, div.wrap.center')]
    .filter(e => !e.classList.contains('hide') && !e.classList.contains('hidden') && e.offsetParent !== null).length"""


def wait_idle(page, timeout: float = 30) -> None:
    """Until no component shows Gradio's pending overlay (twice in a row, 300 ms apart: events chain)."""
    deadline = time.time() + timeout
    calm = 0
    while time.time() < deadline:
        calm = calm + 1 if page.evaluate(PENDING) == 0 else 0
        if calm >= 2:
            return
        page.wait_for_timeout(300)
    pytest.fail(f"the page still shows pending components after {timeout} s")


def shot(page, name: str) -> None:
    wait_idle(page)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring in the docs
    # Galleries load their images lazily: scroll through the page and give every image time to arrive (best
    # effort: while a run renders samples, the gallery keeps changing).
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    try:
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=5_000)
    except Exception:
        pass
    page.evaluate("() => window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("LORATRAINER_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / f"{name}.png")


# -- small helpers that find components by their schema path or elem_id, never by position -------------------


def box(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def field(page, path: str):
    return box(page, "field-" + path.replace(".", "-"))


def set_value(locator, value) -> None:
    locator.fill(str(value))
    locator.press("Tab")


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).first.click()


def open_accordion(page, elem_id: str) -> None:
    button = page.locator(f"#{elem_id} > button.label-wrap, #{elem_id} button.label-wrap").first
    content = page.locator(f"#{elem_id} [data-testid=accordion-content]").first
    if not content.is_visible():
        button.click()


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def progress_step(page) -> int:
    el = page.locator("#lt-progress-text")
    return int(el.get_attribute("data-step") or 0) if el.count() else 0


def test_prepare_preset_train_sample_stop(server, browser, workspace):
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    assert page.url.endswith("/en/")

    # 1. Dataset: prepare a project from a plain folder of images; the folders fill in and the check runs.
    open_accordion(page, "prepare")
    set_value(box(page, "prep-src"), workspace / "photos")
    set_value(box(page, "prep-dest"), workspace / "project")
    set_value(box(page, "prep-name"), "small house")
    set_value(box(page, "prep-repeats"), 10)
    page.locator("#prep-button").click()
    page.locator("#prep-message").get_by_text("Created").wait_for()
    assert field(page, "folders.train_data_dir").input_value() == str(workspace / "project" / "image")
    page.locator("#check-summary").get_by_text("Ready to train").wait_for(timeout=60_000)
    page.locator("#steps").get_by_text("steps in total").wait_for()
    shot(page, "dataset")

    # 2. Training: a shipped preset, then the tiny model and CPU-sized settings, all by field path.
    tab(page, "2. Training")
    choose(page, "preset-choice", "SD1.5 style (default) (built-in)")
    page.locator("#preset-load").click()
    page.locator("#config-message").get_by_text("loaded").wait_for()
    assert field(page, "network.network_dim").input_value() == "64"
    assert field(page, "folders.output_name").input_value() == "last"  # the preset kept the user's fields
    set_value(field(page, "model.pretrained_model_name_or_path"), workspace / "tiny-sd")
    page.locator("#check-model").get_by_text("diffusers model folder").wait_for()
    set_value(field(page, "folders.output_name"), "house")
    set_value(field(page, "network.network_dim"), 4)
    set_value(field(page, "network.network_alpha"), 4)
    set_value(field(page, "optimizer.epoch"), 1000)  # far longer than the test: it stops the run
    set_value(field(page, "saving.save_every_n_epochs"), 5)
    choose(page, "field-optimizer-optimizer", "AdamW")
    choose(page, "field-precision-mixed_precision", "no")
    set_value(field(page, "buckets.max_resolution"), "64,64")
    set_value(field(page, "launch.num_cpu_threads_per_process"), 1)
    set_value(field(page, "sampling.sample_every_n_steps"), 20)
    set_value(field(page, "sampling.sample_prompts"), "a small house --w 64 --h 64 --s 2 --d 1")
    open_accordion(page, "advanced-buckets")
    set_value(field(page, "buckets.min_bucket_reso"), 64)
    open_accordion(page, "advanced-dataset")
    page.locator("#field-dataset-flip_aug input[type=checkbox]").uncheck()
    page.locator("#run-show-command").click()
    expect_text(page, "#run-command", "loratrainer.train.entry")

    page.locator("#run-start").click()
    wait_until(lambda: progress_step(page) > 0, 180, "training progress", page)
    assert page.locator("#lt-progress-text").get_attribute("data-status") == "running"
    assert re.search(r"step \d+/\d+ · epoch \d+/1000", page.locator("#lt-progress-text").inner_text())

    # A page reload re-attaches to the running job, settings included.
    page.reload(wait_until="domcontentloaded")
    tab(page, "2. Training")
    wait_until(lambda: progress_step(page) > 0, 30, "re-attached progress", page)
    assert field(page, "folders.output_name").input_value() == "house"
    before = progress_step(page)
    wait_until(lambda: progress_step(page) > before, 60, "progress continuing after reload", page)

    # A sample image appears in the gallery (the trainer renders one every 20 steps).
    failed = []
    try:
        page.locator("#run-samples img").first.wait_for(timeout=60_000)
    except Exception as exc:  # keep going so Stop is still checked; fail at the end
        failed.append(f"no sample image appeared: {exc}")
    page.locator("#run-loss").scroll_into_view_if_needed()
    shot(page, "training")

    page.locator("#run-stop").click()
    page.locator("#run-status").get_by_text("Stopped", exact=False).wait_for(timeout=120_000)
    assert page.locator("#lt-progress-text").get_attribute("data-status") == "stopped"
    shot(page, "training-stopped")

    # 3. Results: the interrupted LoRA and the paths to copy.
    tab(page, "3. Results")
    page.locator("#results-refresh").click()
    wait_until(lambda: "house-interrupted.safetensors" in page.locator("#results-files").inner_text(), 30, "the interrupted LoRA in Results", page)
    assert (workspace / "project" / "model" / "house-interrupted.safetensors").exists()
    shot(page, "results")

    # Utilities > Captioning, where the Kohya tutorial sends people: caption a folder (same text for each image).
    folder = workspace / "to-caption"
    tab(page, "Utilities")
    page.get_by_role("tab", name="Captioning").wait_for()
    page.locator("#cap-method").get_by_text("Same text for every image").click()
    set_value(box(page, "cap-folder"), folder)
    set_value(box(page, "cap-fixed-text"), "a red cat")
    page.locator("#cap-run").click()
    page.locator("#cap-message").get_by_text("3 caption(s) written").wait_for(timeout=60_000)
    assert [(folder / f"cat {i}.txt").read_text(encoding="utf-8").strip() for i in range(3)] == ["a red cat"] * 3
    shot(page, "utilities")

    # The caption editor: show the folder, click an image, change its caption, save, and find it on disk.
    page.get_by_role("tab", name="Caption editor").click()
    set_value(box(page, "ed-folder"), folder)
    page.locator("#ed-load").click()
    page.locator("#ed-gallery img").nth(2).wait_for()
    page.locator("#ed-gallery img").first.click()
    caption = box(page, "ed-caption")
    wait_until(lambda: caption.input_value() == "a red cat", 30, "the clicked image's caption in the editor", page)
    caption.fill("a red cat sitting on a wall")
    # Saved as you go: clicking the next image leaves the caption box, which saves the changed caption.
    page.locator("#ed-gallery img").nth(1).click()
    wait_until(lambda: (folder / "cat 0.txt").read_text(encoding="utf-8").strip() == "a red cat sitting on a wall", 30,
               "the edited caption saved when the next image was clicked", page)
    page.locator("#ed-saved").get_by_text("cat 0.txt").wait_for()
    wait_until(lambda: caption.input_value() == "a red cat", 30, "the second image's caption in the editor", page)
    caption.fill("a red cat asleep")
    page.locator("#ed-save").click()  # and the Save button
    page.locator("#ed-saved").get_by_text("cat 1.txt").wait_for()
    assert (folder / "cat 1.txt").read_text(encoding="utf-8").strip() == "a red cat asleep"
    shot(page, "caption-editor")
    context.close()
    assert not failed, failed


def test_korean_page(server, browser, workspace):
    context = browser.new_context(locale="ko-KR", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    assert page.url.endswith("/ko/")
    page.get_by_role("tab", name="2. 학습").click()
    page.locator("#run-start").get_by_text("학습 시작").wait_for(timeout=30_000)
    assert "기본 설정" in page.locator("#section-basic").inner_text()
    shot(page, "ko-training")

    # A broken dataset: the check's problems are Korean sentences (file and setting names aside).
    page.get_by_role("tab", name="1. 데이터셋").click()
    set_value(field(page, "folders.train_data_dir"), workspace / "broken")
    expect_text(page, "#check-problems", "파일이 비어 있습니다")
    problems = page.locator("#check-problems").inner_text()
    assert "파일이 비어 있습니다" in problems and "접두사가 없습니다" in problems, problems
    assert "the file is empty" not in problems and "no `<repeats>_` prefix" not in problems
    shot(page, "ko-dataset")
    context.close()


def expect_text(page, selector: str, text: str, timeout: float = 30) -> None:
    wait_until(lambda: text in (page.locator(f"{selector} textarea").first.input_value() if page.locator(f"{selector} textarea").count()
                                else page.locator(selector).inner_text()), timeout, f"{text!r} in {selector}", page)


def wait_until(condition, timeout: float, what: str, page) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        page.wait_for_timeout(500)
    shot(page, "failure")
    status = page.locator("#run-status").inner_text() if page.locator("#run-status").count() else ""
    log = page.locator("#run-log textarea").input_value() if page.locator("#run-log textarea").count() else ""
    pytest.fail(f"timed out waiting for {what}\nstatus: {status}\nlog:\n{log}")
