"""Issue 22, the run's lifecycle: a stop is seen in every phase (here: while latents are cached, in a real run),
the trainer says what it does before the first step (phase events with a count), and the files say the precision
that was used."""

from __future__ import annotations

from tests.test_train_support import small_config, start_with_env, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import os
import time
from pathlib import Path

import pytest

from loratrainer.run import events
from loratrainer.config import with_values
from loratrainer.run import files as run_files
from loratrainer.run.phases import STOPPED_BEFORE_TRAINING
from tests.datasets import make_dataset

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX process groups")
CACHING_IMAGES = 80
CACHING_SIZE = 512  # the tiny VAE at 512 px: caching 80 images takes several seconds on a 2-core machine


def _events(run_dir: Path) -> list[dict]:
    return events.read_events(run_dir / run_files.EVENTS_FILE)[0]


def caching_config(root: Path, model: Path):
    """Many images at a size that makes the latent cache take several seconds."""
    data = make_dataset(root / "many", {"1_thing": [(CACHING_SIZE, CACHING_SIZE)] * CACHING_IMAGES})
    config = small_config(root, model, epoch=1)
    return with_values(config, {"train_data_dir": str(data), "max_resolution": f"{CACHING_SIZE},{CACHING_SIZE}", "min_bucket_reso": 64,
                                "cache_latents": True})


def wait_for_phase(run_dir: Path, phase: str, done_at_least: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in _events(run_dir):
            if e["event"] == "phase" and e["phase"] == phase and (e.get("done") or 0) >= done_at_least:
                return e
            if e["event"] == "ended":
                raise AssertionError(f"the run ended before {phase}: {e}")
        time.sleep(0.05)
    raise AssertionError(f"no {phase} event with done >= {done_at_least} within {timeout} s")


def test_stop_while_latents_are_cached_ends_stopped_within_seconds_with_nothing_saved(tmp_path, tiny_model):
    run = start_with_env(caching_config(tmp_path, tiny_model))
    try:
        seen = wait_for_phase(run.run_dir, "caching_latents", 2)
        assert seen["total"] == CACHING_IMAGES
        run.request_stop()
        asked = time.monotonic()
        code = run.wait(timeout=120)
        took = time.monotonic() - asked
    finally:
        if run.poll() is None:
            run.kill()
    evs = _events(run.run_dir)
    ended = evs[-1]
    assert ended["event"] == "ended" and ended["status"] == "stopped", evs[-3:]
    assert code == events.EXIT_CODES["stopped"]
    assert ended["reason"] == STOPPED_BEFORE_TRAINING
    cached = [e for e in evs if e["event"] == "phase" and e["phase"] == "caching_latents"]
    assert cached[-1]["done"] < CACHING_IMAGES  # it stopped inside the cache, not after it
    assert not any(e["event"] in ("started", "progress", "checkpoint") for e in evs)
    assert not list((tmp_path / "out").glob("*.safetensors"))  # nothing was trained: nothing to save
    assert took < 15, f"the stop took {took:.1f} s"  # one image's time plus the process's exit, on a loaded machine


def test_phase_events_fold_into_the_words_the_page_and_the_cli_show():
    from loratrainer.run.phases import phase_message

    state = events.summarize([{"event": "phase", "phase": "loading_model"}])
    assert state.status == "starting" and str(phase_message(state)) == "loading the model"
    events.summarize([{"event": "phase", "phase": "caching_latents", "done": 240, "total": 1870, "eta_s": 170.0}], state)
    assert str(phase_message(state)) == "caching latents 240/1,870, 3 min left"
    events.summarize([{"event": "started", "total_steps": 10, "epochs": 1, "resumed_from": "/o/x-state"}], state)
    assert phase_message(state) is None and state.resumed_from == "/o/x-state"  # the step count says it from here
    events.summarize([{"event": "phase", "phase": "sampling", "done": 0, "total": 4}], state)
    assert str(phase_message(state)) == "making sample image 1 of 4"
    events.summarize([{"event": "ended", "status": "stopped", "reason": STOPPED_BEFORE_TRAINING}], state)
    assert phase_message(state) is None


# -- the CLI -----------------------------------------------------------------------------------------------------


@pytest.fixture
def filling_fs(tmp_path):
    """A real tmpfs large enough for the launcher's free-space check, filled once the run has started."""
    from tests.tmpfs import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "out", "400m") as mount:
        yield mount


def test_the_cli_says_a_full_disk_once_with_the_log_path_and_no_traceback(tmp_path, tiny_model, filling_fs):
    import io

    from loratrainer.launch.follow import follow

    config = small_config(tmp_path, tiny_model, epoch=1, logging_dir=str(tmp_path / "log"))
    run = start_with_env(config)
    st = os.statvfs(filling_fs)
    with open(filling_fs / "filler.bin", "wb") as fh:  # the model is still loading: the first save finds the disk full
        os.posix_fallocate(fh.fileno(), 0, st.f_bavail * st.f_frsize - 8 * 1024)
    out = io.StringIO()
    code = follow(run, stream=out, poll_s=0.2)
    text = out.getvalue()
    assert code == events.EXIT_CODES["disk_full"], text
    # the coded reason (run/outcomes.py), in English: the file it could not write, in the full output folder
    assert text.count("disk full") == 1 and f"disk full: Could not write {filling_fs}" in text, text
    assert "Traceback" not in text and "last lines of the log" not in text, text
    assert f"log: {run.run_dir / run_files.LOG_FILE}" in text
    assert "Traceback" in (run.run_dir / run_files.LOG_FILE).read_text()  # the developer's copy is kept in the log


def test_the_cli_shows_the_caching_count_and_says_nothing_was_saved(tmp_path, tiny_model):
    import io

    from loratrainer.launch.follow import follow

    run = start_with_env(caching_config(tmp_path, tiny_model))
    wait_for_phase(run.run_dir, "caching_latents", 1)
    run.request_stop()
    out = io.StringIO()
    code = follow(run, stream=out, poll_s=0.2)
    text = out.getvalue()
    assert code == events.EXIT_CODES["stopped"]
    assert "loading the model" in text and f"caching latents 0/{CACHING_IMAGES}" in text, text
    assert "Stopped before the first training step: nothing was trained, so nothing was saved." in text
    assert "step 0/" not in text and "Traceback" not in text


def test_fp16_asked_on_a_cpu_is_recorded_as_the_precision_used_and_sampling_reports_its_images(tmp_path, tiny_model):
    from loratrainer.gui.tab_results import read_metadata

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a house --w 64 --h 64 --s 2\na tree --w 64 --h 64 --s 2\n")
    config = small_config(tmp_path, tiny_model, epoch=1, mixed_precision="fp16", sample_prompts=str(prompts), sample_every_n_epochs=1)
    run = start_with_env(config, {"CUDA_VISIBLE_DEVICES": ""})
    assert run.wait(timeout=300) == 0
    evs = _events(run.run_dir)
    assert next(e for e in evs if e["event"] == "started")["mixed_precision"] == "no"
    # the page says it from the trainer's `note` event, in its language; every note of the package is coded
    from loratrainer.gui.i18n import Translator
    from loratrainer.gui.jobs import Jobs
    from loratrainer.gui.run_view import run_notes

    notes = events.read_run_state(run.run_dir).notes
    assert [n["msg"]["code"] for n in notes if "precision_off" in n.get("msg", {}).get("code", "")] == ["train.precision_off_cpu"]
    assert all("msg" in n for n in notes), notes
    ko = run_notes(Jobs(tmp_path / "gui-state").view(run.run_dir), Translator("ko"))
    assert "CUDA GPU가 없어 혼합 정밀도 fp16 설정을 끄고 CPU에서 fp32로 학습합니다" in ko, ko
    meta = read_metadata(tmp_path / "out" / "last.safetensors")
    assert meta["ss_mixed_precision"] == "no"  # it trained in fp32; the file said fp16
    sampling = [(e["done"], e["total"]) for e in evs if e["event"] == "phase" and e["phase"] == "sampling"]
    assert sampling[:2] == [(0, 2), (1, 2)]
