"""The real GUI in headless Chromium, driving the real trainer, as a first-time user walks it (issue 11).

The walk: prepare a project with Repeats left empty (= suggested), no bare "Error" badge anywhere; on the Training
tab, "N images, M skipped, S steps" live; mistakes (a rate typed "0,0001" is asked about before starting, Epochs 0
and Show command refused in one sentence naming the box); run "house" to the end (asked first about the skipped
images), its notes in the page with the labels; the same name again refused by Show command and Start, with the
finished run's view cleared; run "house-long" (a common name prefix), refreshed without dimming, Start again
while it runs (the live status stays), reload and re-attach, a sample, Stop ("Stopping…" until stopped, then
Stop greyed out); Results: Refresh selects the newest run, each run lists exactly its own files, headers on one
line, the rates used, a row's metadata and path, open folder and TensorBoard, the prompt x epoch grid and the
epoch x weight grid on the tiny model (weight 0 identical down the column). Then Utilities > Captioning and the
caption editor; before any run, what a first-time user meets (issue 22: Prepare's renamed source box and the
GIF it leaves out, a Windows path explained under its box, the no-CUDA AdamW8bit note with its one-click AdamW,
rate boxes reading "0,0001"); the caption editor past an unreadable image (the clicked image's caption file is
the one saved, no other), and the Korean page (a broken dataset's problems and the run notes in Korean; Gradio's own words
and the chart axes in Korean in an English browser too). Screenshots of every tab go to
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
    for i, name in enumerate(["a beach.png", "b broken.png", "c mountain.png", "d forest.png"]):  # the editor's folder
        make_caption(make_image(root / "editor" / name, (64, 64), color=(50 * i, 90, 160)), f"caption of {name[0]}")
    (root / "editor" / "b broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
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


def progress_status(page) -> str:
    el = page.locator("#lt-progress-text")
    return (el.get_attribute("data-status") or "") if el.count() else ""


def progress_step(page) -> int:
    el = page.locator("#lt-progress-text")
    return int(el.get_attribute("data-step") or 0) if el.count() else 0


ERROR_BADGE = """() => [...document.querySelectorAll('span, div')].filter(e => e.children.length === 0 && e.textContent.trim() === 'Error'
    && e.offsetParent !== null).length"""


# Gradio marks an output whose event is pending with a `pending` class (dimmed to opacity .2, or flashing).
DIMMED = """() => ['#run-status', '#run-progress', '#run-loss', '#run-samples', '#run-log'].flatMap(sel =>
    [...document.querySelectorAll(sel + '.pending, ' + sel + ' .pending')]).filter(e => e.offsetParent !== null)
    .map(e => getComputedStyle(e)).filter(c => parseFloat(c.opacity) < 0.99 || (c.animationName && c.animationName !== 'none'))
    .map(c => c.opacity + ' ' + c.animationName)"""


# For each visible Browse… button: (id, its bottom minus its path box's input bottom, its left minus the input's right).
BROWSE_OFFSETS = """() => [...document.querySelectorAll('.lt-path-row')].filter(r => r.offsetParent !== null).map(r => {
    const b = r.querySelector('.lt-browse'), i = r.querySelector('input, textarea');
    if (!b || !i) return null;
    const br = b.getBoundingClientRect(), ir = i.getBoundingClientRect();
    return [b.id, Math.round(br.bottom - ir.bottom), Math.round(br.left - ir.right)];
}).filter(x => x && !x[0].endsWith('-use'))"""


# Records, as it happens, any element of the live view that Gradio marks pending while dimmed or flashing.
WATCH_DIMMING = """() => {
    window.__ltDimmed = [];
    const live = ['#run-status', '#run-progress', '#run-loss', '#run-samples', '#run-log', '#run-notes'];
    const look = () => live.flatMap(sel => [...document.querySelectorAll(sel + '.pending, ' + sel + ' .pending')])
        .map(e => [e, getComputedStyle(e)]).filter(([e, c]) => e.offsetParent !== null
            && (parseFloat(c.opacity) < 0.99 || (c.animationName && c.animationName !== 'none')))
        .forEach(([e, c]) => window.__ltDimmed.push((e.id || e.className) + ' ' + c.opacity + ' ' + c.animationName));
    new MutationObserver(look).observe(document.body, {attributes: true, attributeFilter: ['class'], subtree: true});
}"""


def set_training(page, workspace, name: str, *, epochs: int = 1, max_steps: int = 0, every: int = 4) -> None:
    """The tiny model and CPU-sized settings, all by field path: a file and a sample every `every` steps."""
    set_value(field(page, "model.pretrained_model_name_or_path"), workspace / "tiny-sd")
    page.locator("#check-model").get_by_text("diffusers model folder").wait_for()
    set_value(field(page, "folders.output_name"), name)
    set_value(field(page, "network.network_dim"), 4)
    set_value(field(page, "network.network_alpha"), 4)
    set_value(field(page, "training.epoch"), epochs)
    choose(page, "field-optimizer-optimizer", "AdamW")  # mixed precision stays fp16: the trainer notes it is off on a CPU
    set_value(field(page, "buckets.max_resolution"), "64,64")
    set_value(field(page, "launch.num_cpu_threads_per_process"), 1)
    set_value(field(page, "saving.save_every_n_epochs"), 0)
    set_value(field(page, "sampling.sample_every_n_steps"), every)
    set_value(field(page, "sampling.sample_prompts"), "a small house --w 64 --h 64 --s 2 --d 1\na red door --w 64 --h 64 --s 2 --d 2")
    open_accordion(page, "advanced-training")
    set_value(field(page, "training.max_train_steps"), max_steps)
    open_accordion(page, "advanced-saving")
    set_value(field(page, "saving.save_every_n_steps"), every)
    open_accordion(page, "advanced-buckets")
    set_value(field(page, "buckets.min_bucket_reso"), 64)
    open_accordion(page, "advanced-dataset")
    page.locator("#field-dataset-flip_aug input[type=checkbox]").uncheck()


def choose_run(page, name: str) -> None:
    """Pick the run called `<name>_<date>` in the Results run list (not `<name>-long_<date>`)."""
    page.locator("#results-run input").first.click()
    page.get_by_role("option").filter(has_text=re.compile(rf"(?<![\w-]){re.escape(name)}_\d{{8}}-\d{{6}}")).first.click()


def results_files(page) -> list[str]:
    """The File column of the Results table."""
    # Gradio's Dataframe draws its rows as div[role=row] (a virtual list), one span.text per cell
    cells = page.locator("#results-files").evaluate("e => [...e.querySelectorAll('div[role=row]')].map(r => (r.querySelector('.text') || {}).textContent || '')")
    return [c.strip() for c in cells if ".safetensors" in c]


def test_prepare_train_two_runs_stop_results_and_grids(server, browser, workspace):
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    assert page.url.endswith("/en/")

    # 1. Dataset: prepare a project from a plain folder of images with Repeats left empty (= suggested).
    open_accordion(page, "prepare")
    set_value(box(page, "prep-src"), workspace / "photos")
    set_value(box(page, "prep-dest"), workspace / "project")
    set_value(box(page, "prep-name"), "small house")
    assert box(page, "prep-repeats").input_value() == ""
    page.locator("#prep-button").click()
    page.locator("#prep-message").get_by_text("Created").wait_for()
    assert "150 repeats" in page.locator("#prep-message").inner_text()  # the suggestion for 4 images
    assert (workspace / "project" / "image" / "150_small house").is_dir()
    assert field(page, "folders.train_data_dir").input_value() == str(workspace / "project" / "image")
    page.locator("#check-summary").get_by_text("Ready to train").wait_for(timeout=60_000)
    page.locator("#steps").get_by_text("steps in total").wait_for()
    assert page.evaluate(ERROR_BADGE) == 0, "a component shows a bare Error badge"
    # each Browse… sits beside its path box, level with the box's input field
    offsets = page.evaluate(BROWSE_OFFSETS)
    assert len(offsets) == 4 and all(abs(dy) <= 2 and dx > 0 for _, dy, dx in offsets), offsets
    shot(page, "dataset")

    # 2. Training: a shipped preset, then run "house": 12 steps, a file and samples every 4 steps; it finishes.
    tab(page, "2. Training")
    choose(page, "preset-choice", "SD1.5 style (default) (built-in)")
    page.locator("#preset-load").click()
    page.locator("#config-message").get_by_text("loaded").wait_for()
    assert field(page, "network.network_dim").input_value() == "64"
    assert field(page, "folders.output_name").input_value() == "last"  # the preset kept the user's fields
    assert page.locator("#run-stop button, button#run-stop").first.is_disabled()  # nothing runs: Stop is off
    set_training(page, workspace, "house", max_steps=12, every=4)
    # The Training tab counts images and steps live: 64 px buckets leave out the two non-square photos.
    expect_text(page, "#run-summary", "2 images, 2 skipped, 12 steps")

    # Mistakes. A rate typed with a decimal comma is read and said back (issue 22); a rate far too high for the
    # optimizer is asked about before starting, and nothing starts on Cancel.
    rate = field(page, "optimizer.learning_rate")
    rate.fill("")
    rate.press_sequentially("0,0001")
    rate.press("Tab")
    expect_text(page, "#field-optimizer-learning_rate", "read as 0.0001")
    set_value(rate, "1")
    page.locator("#run-start").click()
    page.locator("#confirm-text").get_by_text("far above what AdamW usually takes").wait_for()
    assert "Learning rate is 1" in page.locator("#confirm-text").inner_text()
    page.locator("#run-start-cancel").click()
    page.locator("#run-start-anyway").first.wait_for(state="hidden")
    set_value(rate, "0.0001")
    # Epochs 0: the sentence names the box as labelled, no red "Error" badge anywhere (Gradio's own bounds check
    # used to refuse it before any handler ran); Show command says the same instead of showing a command.
    set_value(field(page, "training.epoch"), 0)
    page.locator("#run-start").click()
    expect_text(page, "#run-message", "Epochs: must be at least 1 (got 0)")
    assert page.evaluate(ERROR_BADGE) == 0, "a component shows a bare Error badge"
    page.locator("#run-show-command").click()
    expect_text(page, "#run-message", "Start would refuse these settings")
    assert "Epochs: must be at least 1" in page.locator("#run-message").inner_text()
    assert page.evaluate(ERROR_BADGE) == 0, "a component shows a bare Error badge"
    set_value(field(page, "training.epoch"), 1)
    assert not list((workspace / "project" / "log").glob("house_*"))
    page.locator("#run-show-command").click()
    expect_text(page, "#run-command", "loratrainer.train.entry")
    page.locator("#run-start").click()
    # Two photos are smaller than the 64 px buckets: the page asks before starting, and nothing runs until then.
    page.locator("#confirm-text").get_by_text("2 image(s) would be skipped").wait_for()
    assert not list((workspace / "project" / "log").glob("house_*"))
    page.locator("#run-start-anyway").click()
    page.locator("#run-status").get_by_text("Finished", exact=False).wait_for(timeout=300_000)
    assert not page.locator("#confirm-start").is_visible()
    # the trainer's notes are in the page, not only in a log file
    expect_text(page, "#run-notes", "Mixed precision fp16 is off")
    expect_text(page, "#run-notes", "Max train steps = 12 overrides the epoch count (Epochs)")  # labels, not setting keys

    # The same name again: the file exists. Show command runs Start's checks and says why it would refuse (naming
    # the settings as labelled); Start refuses alike, and the finished run's progress, chart and samples go.
    page.locator("#run-samples img").first.wait_for()
    page.locator("#run-show-command").click()
    expect_text(page, "#run-message", "Start would refuse these settings")
    said = page.locator("#run-message").inner_text()
    assert "house.safetensors" in said and "Output name" in said and "If the output file exists" in said, said
    assert box(page, "run-command").input_value() == ""
    page.locator("#run-start").click()  # refused at once: no "Start anyway?" before a refusal (issue 22)
    expect_text(page, "#run-message", "Not started.")
    assert not page.locator("#confirm-start").is_visible()
    expect_text(page, "#run-status", "Not started: the reason is above")  # not "No run yet" on a page that has run
    wait_until(lambda: page.locator("#run-samples img").count() == 0 and progress_status(page) == "", 30, "the last run's view cleared", page)
    assert "Finished" not in page.locator("#run-status").inner_text()
    assert page.evaluate(ERROR_BADGE) == 0

    # 3. Run "house-long" (a common name prefix): far longer than the test, which stops it.
    set_value(field(page, "folders.output_name"), "house-long")
    set_value(field(page, "training.max_train_steps"), 0)
    set_value(field(page, "training.epoch"), 20)  # 6000 steps: far longer than the test
    set_value(field(page, "sampling.sample_every_n_steps"), 20)
    # Few files however far the run gets before Stop: Gradio's Dataframe draws only the rows in view (a virtual
    # list), so with dozens of step files the interrupted one at the bottom would not be in the page to find.
    set_value(field(page, "saving.save_every_n_steps"), 250)
    page.locator("#run-start").click()
    page.locator("#run-start-anyway").click()
    wait_until(lambda: progress_status(page) == "running" and progress_step(page) > 0, 180, "training progress", page)
    assert re.search(r"step \d+/6000 · epoch \d+/20", page.locator("#lt-progress-text").inner_text())

    # The live view is refreshed every second without dimming or flashing: every class change in it for 6 s.
    page.evaluate(WATCH_DIMMING)
    ticks = progress_step(page)
    page.wait_for_timeout(6000)
    assert progress_step(page) > ticks, "the live view did not refresh while watched"
    assert page.evaluate("() => window.__ltDimmed") == [], "the live view dims or flashes while it refreshes"
    assert page.evaluate(DIMMED) == []

    # Start again while it runs: the answer comes under the buttons, the live status stays.
    page.locator("#run-start").click()
    page.locator("#run-message").get_by_text("still going").wait_for()
    before = progress_step(page)
    wait_until(lambda: progress_step(page) > before, 60, "progress going on after the second Start", page)
    assert page.locator("#run-status").get_by_text("Training: step").count() == 1
    assert "still going" in page.locator("#run-message").inner_text()

    # A page reload re-attaches to the running job, settings included.
    page.reload(wait_until="domcontentloaded")
    tab(page, "2. Training")
    wait_until(lambda: progress_step(page) > 0, 30, "re-attached progress", page)
    assert field(page, "folders.output_name").input_value() == "house-long"
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

    # Stop: "Stopping…" stays until the trainer has saved and ended, then "Stopped".
    page.locator("#run-stop").click()
    page.locator("#run-status").get_by_text("Stopping", exact=False).wait_for(timeout=10_000)
    seen = []
    deadline = time.time() + 120
    while time.time() < deadline:
        text = page.locator("#run-status").inner_text()
        seen.append("Stopped" if "Stopped at step" in text else "Stopping" if "Stopping" in text else text)
        if seen[-1] == "Stopped":
            break
        page.wait_for_timeout(250)
    assert seen[-1] == "Stopped", seen
    assert set(seen[:-1]) <= {"Stopping"}, f"the status went back to the old one while stopping: {seen}"
    assert page.locator("#lt-progress-text").get_attribute("data-status") == "stopped"
    assert page.locator("#run-stop button, button#run-stop").first.is_disabled()
    shot(page, "training-stopped")

    # 4. Results: Refresh selects the newest run; each run lists exactly its own files.
    tab(page, "3. Results")
    page.locator("#results-refresh").click()
    wait_until(lambda: "house-long-interrupted.safetensors" in results_files(page), 30, "the interrupted LoRA in Results", page)
    long_files = results_files(page)
    assert long_files and all(name.startswith("house-long") for name in long_files), long_files
    assert (workspace / "project" / "model" / "house-long-interrupted.safetensors").exists()
    choose_run(page, "house")
    wait_until(lambda: results_files(page) and not any(n.startswith("house-long") for n in results_files(page)), 30, "the house run's files", page)
    house_files = results_files(page)
    assert house_files and not any(name.startswith("house-long") for name in house_files), house_files
    assert "house.safetensors" in house_files
    # every column header on one line (the Epoch header wrapped to "Ep/oc/h")
    lines = page.locator("#results-files").evaluate("""e => [...e.querySelectorAll('th, [role=columnheader]')]
        .filter(h => h.offsetParent !== null && h.innerText.trim()).map(h => {
            // the lines the header's text takes: the distinct tops of its text nodes' line boxes
            const tops = new Set(), walk = document.createTreeWalker(h, NodeFilter.SHOW_TEXT);
            for (let n = walk.nextNode(); n; n = walk.nextNode()) {
                if (!n.textContent.trim()) continue;
                const r = document.createRange(); r.selectNodeContents(n);
                [...r.getClientRects()].filter(b => b.width > 0).forEach(b => tops.add(Math.round(b.top)));
            }
            return [h.innerText.trim(), tops.size]})""")
    assert lines and all(n == 1 for _, n in lines), lines
    summary = page.locator("#results-summary").inner_text()
    assert "Optimizer AdamW, learning rate 0.0001" in summary, summary  # the rates the run used
    first_row = page.locator("#results-files div[role=row]").first.inner_text()
    assert re.search(r"\b\d+\.\d{4}\b", first_row), f"no average loss in {first_row!r}"  # the epoch's mean loss, from the trainer
    # a click on a row: the metadata and the path to copy
    page.locator("#results-files div[role=row]").first.locator(".text").first.click()
    wait_until(lambda: box(page, "results-file-path").input_value().endswith(".safetensors"), 30, "the clicked file's path", page)
    page.locator("#results-meta").get_by_text("ss_network_dim").wait_for()
    # downloads, for a browser on another machine (docs/remote.md): the chosen file under its own name, its bytes
    chosen = Path(box(page, "results-file-path").input_value())
    with page.expect_download(timeout=60_000) as got:
        page.locator("#results-download").click()
    assert got.value.suggested_filename == chosen.name and Path(got.value.path()).read_bytes() == chosen.read_bytes()

    # The doors out: the output folder (no desktop here: the page says where the files are) and TensorBoard on
    # loopback, started on the run's log folder.
    page.locator("#results-open-folder").click()
    expect_text(page, "#results-tools-message", str(workspace / "project" / "model"))
    page.locator("#results-tensorboard").click()
    wait_until(lambda: "127.0.0.1" in page.locator("#results-tools-message").inner_text()
               or "not installed" in page.locator("#results-tools-message").inner_text(), 90, "TensorBoard's answer", page)
    tb = re.search(r"http://127\.0\.0\.1:\d+/?", page.locator("#results-tools-message").inner_text())
    if tb:
        import urllib.request

        with urllib.request.urlopen(tb.group(0), timeout=30) as r:
            assert r.status == 200
    assert page.evaluate(ERROR_BADGE) == 0

    # The prompt x epoch grid from the run's samples, saved in the run folder.
    page.locator("#sample-grid-button").click()
    page.locator("#sample-grid-message").get_by_text("Saved as").wait_for(timeout=60_000)
    page.locator("#sample-grid img").first.wait_for()
    grids = list((workspace / "project" / "log").glob("house_*/sample-grid.png"))
    assert len(grids) == 1

    # The epoch x weight grid: rendered in its own process, with progress, on the tiny model.
    set_value(box(page, "grid-weights"), "0, 1")
    set_value(box(page, "grid-steps"), 2)
    set_value(box(page, "grid-width"), 64)
    set_value(box(page, "grid-height"), 64)
    assert "a small house" in box(page, "grid-prompts").input_value()  # the run's first sample prompt
    page.locator("#grid-render").click()
    page.locator("#grid-message").get_by_text("Saved as").wait_for(timeout=300_000)
    page.locator("#weight-grid img").first.wait_for()
    sidecars = list((workspace / "project" / "log").glob("house_*/grids/weights-*.json"))
    assert len(sidecars) == 1
    import json

    sidecar = json.loads(sidecars[0].read_text())
    assert sidecar["weights"] == [0.0, 1.0] and len(sidecar["files"]) == len(house_files)
    # weight 0 is the base model with the fixed seed: one image per prompt down the whole column
    import numpy as np

    from tests.test_compare import cells

    _, grid_cells = cells(sidecars[0].with_suffix(".png"))
    prompts = len(sidecar["prompts"])
    assert len(grid_cells) == prompts * len(house_files) and prompts == 2
    for first in range(prompts):
        column = [row[0] for row in grid_cells[first::prompts]]
        assert all(np.array_equal(column[0], cell) for cell in column[1:])
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


def test_first_steps_say_what_they_do(server, browser, workspace):
    """Issue 22, before any run: Prepare's source box is not another "Image folder" and names the GIF it leaves
    out; a Windows path is explained under its box as Start explains it; without a CUDA GPU the default AdamW8bit
    is said before Start with a one-click AdamW; a rate typed "0,0001" is read and said back."""
    from loratrainer.machine.eight_bit import cuda_available

    src = workspace / "first-photos"
    for i in range(2):
        from tests.datasets import make_image

        make_image(src / f"p{i}.png", (64, 64))
    (src / "party.gif").write_bytes(b"GIF89a")
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    open_accordion(page, "prepare")
    assert "Your pictures (copied from)" in page.locator("#prep-src").inner_text()
    set_value(box(page, "prep-src"), src)
    set_value(box(page, "prep-dest"), workspace / "first-project")
    set_value(box(page, "prep-name"), "first")
    page.locator("#prep-button").click()
    expect_text(page, "#prep-message", "Not copied (1)")
    assert "party.gif" in page.locator("#prep-message").inner_text() and "animation (GIF)" in page.locator("#prep-message").inner_text()
    set_value(field(page, "folders.train_data_dir"), "C:\\Users\\me\\lora\\image")
    expect_text(page, "#check-train", "is a Windows path")
    assert "Not found" not in page.locator("#check-train").inner_text()
    tab(page, "2. Training")
    if not cuda_available():
        choose(page, "field-optimizer-optimizer", "AdamW8bit")  # the default (a reloaded page shows the last run's)
        expect_text(page, "#optimizer-note", "no CUDA GPU")
        page.locator("#optimizer-fix").click()
        wait_until(lambda: field(page, "optimizer.optimizer").input_value() == "AdamW", 30, "AdamW chosen by the one click", page)
        wait_until(lambda: page.locator("#optimizer-note").inner_text().strip() == "", 30, "the note gone with AdamW", page)
    rate = field(page, "optimizer.learning_rate")
    rate.fill("")
    rate.press_sequentially(" 1e-3 ")
    rate.press("Tab")
    expect_text(page, "#field-optimizer-learning_rate", "read as 0.001")
    context.close()


def test_caption_editor_past_an_unreadable_image(server, browser, workspace):
    """Issue 22: an image the editor cannot show is listed by name with why, and a click on the image after it
    edits THAT image's caption file (the gallery used to leave it out and every later click was off by one)."""
    folder = workspace / "editor"
    before = {p.name: p.read_bytes() for p in folder.glob("*.txt")}
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    tab(page, "Utilities")
    page.get_by_role("tab", name="Caption editor").click()
    set_value(box(page, "ed-folder"), folder)
    page.locator("#ed-load").get_by_text("Load folder").click()
    page.locator("#ed-gallery img").nth(3).wait_for()
    assert page.locator("#ed-gallery img").count() == 4
    expect_text(page, "#ed-gallery", "b broken.png: cannot be shown")
    page.locator("#ed-gallery img").nth(1).click()  # the unreadable one: named, with why, its caption editable
    caption = box(page, "ed-caption")
    wait_until(lambda: caption.input_value() == "caption of b", 30, "the unreadable image's caption", page)
    expect_text(page, "#ed-note", "cannot be shown")
    page.locator("#ed-gallery img").nth(2).click()  # past it: the mountain
    wait_until(lambda: caption.input_value() == "caption of c", 30, "the mountain's caption, not the forest's", page)
    assert box(page, "ed-image").input_value().endswith("c mountain.png")
    assert page.locator("#ed-note").inner_text().strip() == ""
    caption.fill("mountain landscape, cyan sky")
    page.locator("#ed-save").click()
    page.locator("#ed-saved").get_by_text("c mountain.txt").wait_for()
    after = {p.name: p.read_bytes() for p in folder.glob("*.txt")}
    assert after.pop("c mountain.txt").decode().strip() == "mountain landscape, cyan sky"
    before.pop("c mountain.txt")
    assert after == before  # no other caption file changed
    shot(page, "caption-editor-unreadable")
    context.close()


def test_korean_page(server, browser, workspace):
    context = browser.new_context(locale="ko-KR", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    assert page.url.endswith("/ko/")
    page.get_by_role("tab", name="2. 학습").click()
    page.locator("#run-start").get_by_text("학습 시작").wait_for(timeout=30_000)
    assert "기본 설정" in page.locator("#section-basic").inner_text()
    if list((workspace / "project" / "log").glob("house-long_*")):  # after the first test: its last run's notes, in Korean
        expect_text(page, "#run-notes", "CUDA GPU가 없어")
        assert "fp16 is off" not in page.locator("#run-notes").inner_text()
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

    # The Korean page in an English browser (the "한국어" link): Gradio's own words ("Use via API") and the loss
    # chart's axes are Korean too, not the browser's English.
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server + "ko/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="2. 학습").click()
    page.locator("#run-loss").get_by_text("스텝").wait_for()
    assert "손실" in page.locator("#run-loss").inner_text()
    footer = page.locator("footer").inner_text()
    assert "API를 통해 사용" in footer and "Use via API" not in footer, footer
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
