"""An SDXL LoRA in the real GUI in headless Chromium, as a newcomer trains one (issue 21: "tiny SDXL-architecture
models ... train end to end on CPU ... in the browser test").

The walk: a folder of captioned images; on the Training tab the tiny SDXL model (a diffusers folder as
save_pretrained writes it; the single file in the original layout is loaded by tests/test_model_sdxl.py and
trained at full size by bench/sdxl_full_size_step.py) typed into the model box; the page says "SDXL model ... training at 1024 px" and, with the
SD1.5 default of 512 px still in the box, that SDXL trains best at 1024 and offers the SDXL defaults; pressing the
button sets 1024 px and its buckets; the newcomer then sets 64 px (what the tiny model trains on a CPU in seconds,
the note says it differs), plain AdamW, Start; the live view shows the steps, the run finishes; Results lists the
run's LoRA, and the file holds Kohya's SDXL names (lora_unet_input_blocks_*, lora_te1_*, lora_te2_*) read from its
safetensors header. Screenshots: training-sdxl.png (and results-sdxl.png) under test-artifacts/screenshots/, and
docs/img/ with LORATRAINER_DOCS_SCREENSHOTS=1.

A diffusers folder carries its own configs, so nothing in the product is patched for the tiny shapes: the run is a
user's run. Needs Debian's chromium (/usr/bin/chromium).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from tests.browser.test_gui_browser import (  # noqa: F401  (server and browser are fixtures, built per module)
    CHROMIUM, browser, choose, expect_text, field, open_accordion, progress_status, progress_step, results_files, server,
    set_value, shot, tab, wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: CI must `apt-get install -y chromium fonts-noto-cjk`")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

STEPS = 4


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from loratrainer.compat import hide_broken_torchvision

    hide_broken_torchvision()
    from tests.datasets import make_caption, make_image
    from tests.tiny_sdxl import save_tiny_sdxl_diffusers

    root = tmp_path_factory.mktemp("gui-sdxl")
    save_tiny_sdxl_diffusers(root / "models" / "my-pony-model")
    for i in range(3):
        image = make_image(root / "project" / "image" / "2_red cube" / f"cube {i}.png", (64, 64), color=(200, 40 * i, 60))
        make_caption(image, f"a red cube, view {i}")
    return root


def safetensors_header(path: Path) -> dict:
    """The tensor names in a .safetensors file's header (8-byte little-endian length, then JSON), read by hand so
    the check does not depend on the code that wrote the file."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    return header


def test_a_newcomer_trains_an_sdxl_lora_from_a_model_folder(server, browser, workspace):
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server, wait_until="domcontentloaded")
    # The image folder (a <repeats>_<name> concept folder of captioned images) and where the LoRA goes.
    tab(page, "1. Dataset")
    set_value(field(page, "folders.train_data_dir"), workspace / "project" / "image")
    set_value(field(page, "folders.output_dir"), workspace / "project" / "model")
    tab(page, "2. Training")

    # The SDXL model folder typed into the model box: the family is read from its weights (its name says Pony, and
    # is not what decides). The box still holds the SD1.5 default 512 px: the note says so and the button offers SDXL's.
    assert field(page, "buckets.max_resolution").input_value() == "512,512"
    set_value(field(page, "model.pretrained_model_name_or_path"), workspace / "models" / "my-pony-model")
    expect_text(page, "#check-model", "SDXL model (read from its weights")
    note = page.locator("#check-model").inner_text()
    assert "training at 1024 px" in note and "A diffusers model folder" in note, note
    assert "Max resolution is 512,512; SDXL trains best at 1024,1024" in note, note
    button = page.locator("#family-defaults")
    button.wait_for()
    assert "SDXL defaults" in button.inner_text()
    button.click()
    wait_until(lambda: field(page, "buckets.max_resolution").input_value() == "1024,1024", 30, "the SDXL resolution", page)
    open_accordion(page, "advanced-buckets")
    assert field(page, "buckets.min_bucket_reso").input_value() == "256"
    assert field(page, "buckets.max_bucket_reso").input_value() == "2048"
    wait_until(lambda: "trains best at" not in page.locator("#check-model").inner_text(), 30, "the note without the 512 px line", page)
    wait_until(lambda: not button.is_visible(), 30, "the button gone once nothing would change", page)

    # 1024 px is hours on a CPU; the tiny model trains at 64 px in seconds: the note says the size differs.
    set_value(field(page, "folders.output_name"), "cube-xl")
    set_value(field(page, "network.network_dim"), 4)
    set_value(field(page, "network.network_alpha"), 4)
    set_value(field(page, "training.epoch"), 1)
    choose(page, "field-optimizer-optimizer", "AdamW")  # no CUDA here: plain AdamW, not AdamW8bit
    set_value(field(page, "buckets.max_resolution"), "64,64")
    set_value(field(page, "launch.num_cpu_threads_per_process"), 1)
    set_value(field(page, "saving.save_every_n_epochs"), 0)
    set_value(field(page, "sampling.sample_every_n_steps"), STEPS)  # one sample with the SDXL pipeline, at the end
    set_value(field(page, "sampling.sample_prompts"), "a red cube --w 64 --h 64 --s 2 --d 1")
    open_accordion(page, "advanced-training")
    set_value(field(page, "training.max_train_steps"), STEPS)
    set_value(field(page, "buckets.min_bucket_reso"), 64)
    expect_text(page, "#check-model", "Max resolution is 64,64; SDXL trains best at 1024,1024")
    expect_text(page, "#run-summary", f"3 images, 0 skipped, {STEPS} steps")

    page.locator("#run-start").click()
    page.wait_for_timeout(1000)
    if page.locator("#run-start-anyway").first.is_visible():  # a question before starting (none expected): answer it
        pytest.fail("Start asked first: " + page.locator("#confirm-text").inner_text())
    # The live view shows the steps as they come (the tiny run is quick: it may be finished when looked at).
    wait_until(lambda: progress_step(page) > 0 and progress_status(page) in ("running", "finished"), 240, "training progress", page)
    page.locator("#run-status").get_by_text("Finished", exact=False).wait_for(timeout=240_000)
    assert progress_status(page) == "finished" and progress_step(page) == STEPS
    assert f"step {STEPS}/{STEPS}" in page.locator("#lt-progress-text").inner_text()
    page.locator("#run-samples img").first.wait_for(timeout=60_000)  # the SDXL pipeline's sample
    page.locator("#run-loss").scroll_into_view_if_needed()
    shot(page, "training-sdxl")

    # Results: the run's LoRA is listed, and the file is an SDXL LoRA as sd-scripts names it.
    tab(page, "3. Results")
    page.locator("#results-refresh").click()
    wait_until(lambda: "cube-xl.safetensors" in results_files(page), 30, "the SDXL LoRA in Results", page)
    shot(page, "results-sdxl")
    lora = workspace / "project" / "model" / "cube-xl.safetensors"
    header = safetensors_header(lora)
    meta = header["__metadata__"]
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"  # as sdxl_train_network.py writes it
    assert meta["ss_sd_model_name"] == "my-pony-model"  # trained from the folder typed in the box
    assert meta["ss_resolution"] == "(64, 64)"
    names = {k.split(".")[0] for k in header if k != "__metadata__"}
    assert {n.split("_")[1] for n in names} == {"unet", "te1", "te2"}, sorted(names)[:5]
    # SDXL's original-layout UNet names (sd-scripts' sdxl_original_unet), not diffusers' down_blocks
    assert any(n.startswith("lora_unet_input_blocks_") for n in names) and any(n.startswith("lora_unet_output_blocks_") for n in names)
    assert any(n.startswith("lora_unet_middle_block_") for n in names)
    assert not any(n.startswith("lora_unet_down_blocks") for n in names)
    assert any(n.startswith("lora_te2_text_model_encoder_layers_") for n in names)
    context.close()
