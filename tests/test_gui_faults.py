"""Failed runs as the GUI shows them, with the real trainer (docs/reliability.md rows 18-20 and 23): the status
line says NaN / out of memory with the advice / disk full / killed in words, next to the log tail, and the
next Start works. Faults are injected with the trainer's LORATRAINER_FAULT."""

from __future__ import annotations

import os
import signal
import time

import pytest

from loratrainer.config import TrainingConfig, with_values

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from loratrainer.compat import hide_broken_torchvision

    hide_broken_torchvision()
    from tests.tiny_sd import save_tiny_diffusers

    return save_tiny_diffusers(tmp_path_factory.mktemp("tiny") / "tiny-sd")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from loratrainer.gui.server import neutralise_gradio_env

    temp = neutralise_gradio_env()
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    return build_page("en", Jobs(tmp_path_factory.mktemp("state")), Display(temp / "display"))[1]


def config_for(tmp_path, model, epochs: int = 2) -> TrainingConfig:
    from tests.datasets import make_dataset

    data = make_dataset(tmp_path / "image", {"4_thing": 2})
    return with_values(TrainingConfig(), {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(tmp_path / "model"),
        "max_resolution": "64,64", "min_bucket_reso": 64, "epoch": epochs, "optimizer": "AdamW", "mixed_precision": "no",
        "num_cpu_threads_per_process": 1, "seed": 1,
    })


def run_to_end(page, config, timeout: float = 240) -> dict:
    h = page.handlers["training"]
    started = h.start(page.show_config(config))
    run_dir = started[page.named["run_dir"]]
    assert run_dir, started[page.named["status"]]
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = h.refresh(run_dir, -1)
        if not out[page.named["timer"]].active:
            return out
        time.sleep(0.5)
    page.jobs.kill(run_dir)
    pytest.fail("the run did not end")


@pytest.mark.parametrize(
    "fault,words",
    [
        ("nan@3", "the loss became NaN"),
        ("oom@2", "Lower the batch size or the max resolution"),
        ("disk_full@save1", "The disk is full"),
    ],
)
def test_failed_run_is_explained(page, tiny_model, tmp_path, monkeypatch, fault, words):
    monkeypatch.setenv("LORATRAINER_FAULT", fault)
    out = run_to_end(page, config_for(tmp_path, tiny_model))
    status = out[page.named["status"]]
    assert words in status, status
    assert out[page.named["log"]].strip(), "the log tail is shown"


def test_killed_run_says_killed_and_the_next_start_works(page, tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("LORATRAINER_FAULT", raising=False)
    h = page.handlers["training"]
    started = h.start(page.show_config(config_for(tmp_path / "a", tiny_model, epochs=500)))
    run_dir = started[page.named["run_dir"]]
    deadline = time.time() + 180
    while page.jobs.view(run_dir).state.step < 1:
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.5)
    process = page.jobs._processes[__import__("pathlib").Path(run_dir)]
    os.killpg(process.pid, signal.SIGKILL)  # as the OOM killer or a user's `kill -9` would
    process.wait(timeout=30)  # the whole run: the killed group can take a moment to disappear
    out = h.refresh(run_dir, -1)
    assert "killed" in out[page.named["status"]], out[page.named["status"]]
    assert out[page.named["timer"]].active is False
    # The GUI knows nothing is running any more: the next Start is accepted and finishes.
    again = run_to_end(page, config_for(tmp_path / "b", tiny_model, epochs=1))
    assert "Finished" in again[page.named["status"]]
