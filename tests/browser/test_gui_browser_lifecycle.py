"""The run's lifecycle in the real GUI in headless Chromium, with the real trainer (issue 22): Stop pressed while
latents are cached (the page shows "caching latents N/M" first, and the run ends "stopped" within seconds,
saying nothing was saved), then a queued run followed from the Queue tab (its live progress and the link to
its live view) and stopped from there. Screenshots go to test-artifacts/screenshots/ (and docs/img/ with
LORATRAINER_DOCS_SCREENSHOTS=1).

The harness (server, browser, helpers) is tests/browser/test_gui_browser.py's; this module has its own workspace.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.browser.test_gui_browser import (  # noqa: F401  (server and browser are fixtures)
    browser, choose, field, open_accordion, progress_status, server, set_value, shot, tab, wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CACHING_IMAGES = 80  # at 512 px the tiny VAE takes several seconds for these on a 2-core machine


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from loratrainer.compat import hide_broken_torchvision

    hide_broken_torchvision()
    from tests.datasets import make_dataset
    from tests.tiny_sd import save_tiny_diffusers

    root = tmp_path_factory.mktemp("gui-lifecycle")
    save_tiny_diffusers(root / "tiny-sd")
    make_dataset(root / "many", {"1_view": [(512, 512)] * CACHING_IMAGES})
    make_dataset(root / "few", {"2_house": 3})
    return root


def set_run(page, workspace: Path, images: str, name: str, resolution: int, epochs: int) -> None:
    tab(page, "1. Dataset")
    set_value(field(page, "folders.train_data_dir"), workspace / images)
    set_value(field(page, "folders.output_dir"), workspace / "out")
    tab(page, "2. Training")
    set_value(field(page, "model.pretrained_model_name_or_path"), workspace / "tiny-sd")
    set_value(field(page, "folders.output_name"), name)
    set_value(field(page, "network.network_dim"), 4)
    set_value(field(page, "network.network_alpha"), 4)
    set_value(field(page, "training.epoch"), epochs)
    choose(page, "field-optimizer-optimizer", "AdamW")
    set_value(field(page, "buckets.max_resolution"), f"{resolution},{resolution}")
    set_value(field(page, "launch.num_cpu_threads_per_process"), 1)
    set_value(field(page, "saving.save_every_n_epochs"), 0)
    set_value(field(page, "sampling.sample_every_n_steps"), 0)
    open_accordion(page, "advanced-buckets")
    set_value(field(page, "buckets.min_bucket_reso"), 64)


def start(page) -> None:
    page.locator("#run-start").click()
    anyway = page.locator("#run-start-anyway")
    try:  # asked first when something looks odd (the page says what); this walk starts anyway
        anyway.wait_for(state="visible", timeout=5_000)
        anyway.click()
    except Exception:
        pass


def test_stop_while_caching_and_a_queued_run_stopped_from_the_page(server, browser, workspace):
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_role("tab", name="2. Training").wait_for()

    # 1. Stop while latents are cached: the page counts the images, then the run ends stopped within seconds.
    set_run(page, workspace, "many", "cached", 512, 1)
    start(page)
    text = page.locator("#lt-progress-text")
    wait_until(lambda: text.count() and text.get_attribute("data-phase") == "caching_latents"
               and re.search(r"caching latents [1-9]\d*/80", text.inner_text()), 180, "the caching count", page)
    assert "step 0/?" not in text.inner_text()
    assert re.search(r"Preparing: caching latents \d+/80", page.locator("#run-status").inner_text())
    shot(page, "training-caching")
    page.locator("#run-stop").click()
    asked = time.time()
    wait_until(lambda: "Stopped before the first training step" in page.locator("#run-status").inner_text(), 60, "the stop", page)
    took = time.time() - asked
    assert took < 20, f"Stop while caching took {took:.0f} s"  # one image plus the page's 1 s refresh, on a loaded machine
    assert "nothing was saved" in page.locator("#run-status").inner_text()
    assert not list((workspace / "out").glob("cached*.safetensors"))
    shot(page, "training-stopped-while-caching")

    # 2. A queued run: the Queue tab shows its progress and a way to its live view; Stop there stops it.
    set_run(page, workspace, "few", "queued", 64, 2000)
    open_accordion(page, "advanced-saving")
    page.locator("#field-saving-save_state input[type=checkbox]").check()
    page.locator("#run-add-to-queue").click()
    page.locator("#run-message").get_by_text("Added queued to the queue").wait_for()
    tab(page, "Queue")
    page.locator("#queue-run").click()
    live = page.locator("#queue-live")
    wait_until(lambda: re.search(r"Running now: queued: step [1-9]\d* of \d+, epoch \d+ of 2000", live.inner_text()), 180,
               "the queued run's progress on the Queue tab", page)
    assert page.locator("#queue-show-live").is_visible() and page.locator("#queue-stop").is_visible()
    shot(page, "queue-running")
    page.locator("#queue-show-live").click()  # the Training tab follows the queued run, Stop enabled
    wait_until(lambda: progress_status(page) == "running" and "Training: step" in page.locator("#run-status").inner_text(), 30,
               "the Training tab following the queued run", page)
    assert page.locator("#run-stop").is_enabled()
    tab(page, "Queue")
    page.locator("#queue-stop").click()
    table = page.locator("#queue-table")
    # the click's answer; on a quick stop the tab's 2 s refresh may already have replaced it with the stopped table
    wait_until(lambda: "Stopping queued" in page.locator("#queue-message").inner_text() or re.search(r"\bstopped\b", table.inner_text()),
               60, "Stop's answer on the Queue tab", page)
    wait_until(lambda: re.search(r"\bstopped\b", table.inner_text()), 120, "the queued run stopped", page)
    assert (workspace / "out" / "queued-interrupted.safetensors").is_file()
    shot(page, "queue-stopped")
    tab(page, "2. Training")
    wait_until(lambda: "queued-interrupted.safetensors" in page.locator("#run-status").inner_text(), 30, "the stopped status", page)
    page.locator("#run-resume").click()  # the state saved at the stop is filled in, its section open
    wait_until(lambda: field(page, "saving.resume").input_value().endswith("queued-interrupted-state"), 30, "Resume filled in", page)
    shot(page, "training-resume")
    context.close()
