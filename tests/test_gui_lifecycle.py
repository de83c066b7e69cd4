"""Issue 22, the run's lifecycle on the page, called the way Gradio calls the handlers: the phase with its count
while the model loads and latents are cached, Stop before the first step, Stop now after a stop that takes too
long, the interrupted file and Resume after a stop, the queue's running run followed by the Training tab and
stopped from the Queue tab, and Show command's precision on a machine without CUDA.

Runs are simulated by writing the run folder as the trainer does (events.EventWriter), with a sleeping process
that names the run folder on its command line as a trainer does (launch/processes.py finds it by that)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratrainer.run import events
from loratrainer.config import TrainingConfig, save_config, with_values
from loratrainer.gui.i18n import Translator
from loratrainer.run import files as run_files
from loratrainer.run.phases import STOPPED_BEFORE_TRAINING
from tests.datasets import make_dataset
from tests.test_gui_handlers import form, page  # noqa: F401  (the page fixture)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="/proc and process groups")


def run_folder(tmp_path: Path, name: str, *evs: tuple[str, dict]) -> Path:
    config = with_values(TrainingConfig(), {"folders.output_dir": str(tmp_path / "model"), "folders.output_name": name})
    run_dir = tmp_path / "log" / f"{name}_20260101-000000"
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / run_files.CONFIG_FILE)
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        for kind, fields in evs:
            w.emit(kind, **fields)
    return run_dir


def fake_trainer(run_dir: Path) -> subprocess.Popen:
    """A process whose command line names the run folder as the trainer's does, in a session of its own."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "loratrainer.train.entry", "--run-dir", str(run_dir)],
                            start_new_session=True)


CACHING = [("phase", {"phase": "loading_model"}), ("phase", {"phase": "caching_latents", "done": 240, "total": 1870, "eta_s": 170.0})]


def test_caching_shows_its_count_a_stop_says_nothing_is_saved_and_stop_now_ends_it(page, tmp_path):
    h, n = page.handlers["training"], page.named
    run_dir = run_folder(tmp_path, "caching", *CACHING)
    trainer = fake_trainer(run_dir)
    try:
        out = h.refresh(str(run_dir), -1)
        assert out[n["status"]] == "Preparing: caching latents 240/1,870, 3 min left…"
        assert "caching latents 240/1,870, 3 min left" in out[n["progress"]] and "step 0/?" not in out[n["progress"]]
        assert out[n["timer"]].active is True and out[n["stop_button"]]["interactive"] is True
        assert out[n["stop_now_button"]]["visible"] is False
        ko = Translator("ko")
        from loratrainer.gui import run_view as progress

        assert "latent 캐시 240/1,870, 남은 시간 3분" in progress.status_line(page.jobs.view(run_dir), ko)
        stopped = h.stop(str(run_dir))
        assert stopped[n["status"]].startswith("Stopping: nothing has been trained yet, so nothing will be saved")
        assert h.refresh(str(run_dir), -1)[n["stop_now_button"]]["visible"] is False  # a stop gets its seconds first
        old = time.time() - 20
        os.utime(run_dir / run_files.STOP_FILE, (old, old))  # the stop has waited 20 s
        out = h.refresh(str(run_dir), -1)
        assert out[n["stop_now_button"]]["visible"] is True and "**Stop now (no save)** ends the run at once" in out[n["status"]]
        out = h.stop_now(str(run_dir))
        assert trainer.wait(timeout=10) == -9  # the whole tree, through launch/processes.py
        assert out[n["status"]] == "The run was ended at once (Stop now): nothing more was saved."
        assert out[n["stop_now_button"]]["visible"] is False and out[n["stop_button"]]["interactive"] is False
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()


def test_a_run_stopped_before_its_first_step_says_nothing_was_saved(page, tmp_path):
    h, n = page.handlers["training"], page.named
    run_dir = run_folder(tmp_path, "early", *CACHING, ("ended", {"status": "stopped", "reason": STOPPED_BEFORE_TRAINING, "step": 0,
                                                                  "epoch": 0, "exit_code": 10}))
    out = h.refresh(str(run_dir), -1)
    assert out[n["status"]] == "Stopped before the first training step: nothing was trained, so nothing was saved."
    assert out[n["resume_button"]]["visible"] is False
    from loratrainer.gui import run_view as progress

    assert "학습한 것이 없으므로" in progress.status_line(page.jobs.view(run_dir), Translator("ko"))


def _stopped_run(tmp_path: Path, name: str, with_state: bool) -> tuple[Path, Path]:
    lora = tmp_path / "model" / f"{name}-interrupted.safetensors"
    state = lora.with_name(lora.stem + "-state")
    evs = [("started", {"total_steps": 8, "epochs": 2, "pid": 999999}),
           ("progress", {"step": 3, "total_steps": 8, "epoch": 1, "epochs": 2, "loss": 0.2, "avg_loss": 0.2, "lr": 1e-4}),
           ("checkpoint", {"path": str(lora), "kind": "interrupted", "epoch": 1, "step": 3})]
    if with_state:
        state.mkdir(parents=True)
        (state / run_files.STATE_FILE).write_text("{}")
        evs.append(("state_saved", {"path": str(state), "step": 3, "epoch": 1}))
    evs.append(("ended", {"status": "stopped", "reason": "", "step": 3, "epoch": 1, "exit_code": 10}))
    return run_folder(tmp_path, name, *evs), state


def test_after_a_stop_the_page_names_the_file_and_resume_fills_in_the_state(page, tmp_path):
    h, n = page.handlers["training"], page.named
    run_dir, state = _stopped_run(tmp_path, "halfway", with_state=True)
    out = h.refresh(str(run_dir), -1)
    assert f"saved as `{tmp_path / 'model' / 'halfway-interrupted.safetensors'}`" in out[n["status"]]
    assert f"Its training state was saved in `{state}`" in out[n["status"]] and "**Resume**" in out[n["status"]]
    assert out[n["resume_button"]]["visible"] is True
    filled = h.resume(str(run_dir))
    assert filled[page.fields["saving.resume"]] == str(state)
    assert filled[n["advanced_saving"]]["open"] is True  # the collapsed section opens on it
    assert "Press Start training to continue" in filled[n["run_message"]]
    # without a saved state: no Resume, and the page says how to have one next time
    run_dir, _ = _stopped_run(tmp_path / "b", "nostate", with_state=False)
    out = h.refresh(str(run_dir), -1)
    assert out[n["resume_button"]]["visible"] is False and "turn on Save training state" in out[n["status"]]
    assert "saved no training state" in h.resume(str(run_dir))[n["run_message"]]


def test_show_command_says_fp16_trains_in_fp32_without_a_cuda_gpu(page, tmp_path, monkeypatch):
    h = page.handlers["training"]
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(make_dataset(tmp_path / "img", {"2_x": 2}))
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    data[page.fields["optimizer.optimizer"]] = "AdamW"
    data[page.fields["precision.mixed_precision"]] = "fp16"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, as torch would see it too
    text = h.show_command(data)[page.named["command"]]
    assert "Precision: fp16 asked, no CUDA GPU on this machine: the run will train in fp32." in text
    data[page.fields["precision.mixed_precision"]] = "no"
    assert "Precision:" not in h.show_command(data)[page.named["command"]]


# -- a queued run, stopped from the page (a real runner and a real trainer) ------------------------------------


def _wait(what, timeout: float = 240, step: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s")


def test_a_queued_run_shows_its_progress_is_followed_by_the_training_tab_and_stops_from_the_queue_tab(page, tmp_path, monkeypatch):
    from tests.test_train_support import small_config
    from tests.tiny_sd import save_tiny_diffusers
    from loratrainer.launch.run_queue import RunQueue

    monkeypatch.setenv("LORATRAINER_CONFIG_DIR", str(tmp_path / "config"))
    queue = RunQueue(tmp_path / "config")
    model = save_tiny_diffusers(tmp_path / "tiny")
    first = queue.add(small_config(tmp_path / "a", model, epoch=200, save_state=True, output_name="first"))
    second = queue.add(small_config(tmp_path / "b", model, epoch=1, output_name="second"))
    q, h, n = page.handlers["queue"], page.handlers["training"], page.named
    q.run()
    try:
        run_dir = Path(_wait(lambda: next((i.run_dir for i in queue.items() if i.id == first.id and i.run_dir), None)))
        out = _wait(lambda: (lambda o: o if re.search(r"step [1-9]", o[n["queue_live"]]) else None)(q.refresh()))
        assert re.fullmatch(r"Running now: \*\*first\*\*: step \d+ of 600, epoch 1 of 200(, \d+:\d\d left)?\.", out[n["queue_live"]])
        assert out[n["queue_stop"]]["visible"] is True and out[n["queue_show_live"]]["visible"] is True
        # Remove on the running item says why not, in one sentence, and leaves it
        said = q.remove(first.id)[n["queue_message"]]
        assert said == "first is training now, so it stays in the queue: press Stop above to stop it, then Remove takes it out."
        assert [i.id for i in queue.items()] == [first.id, second.id]
        # the Training tab follows the queue's run, Stop enabled (a page loaded now, and Show live view)
        attached = h.attach()
        assert attached[n["run_dir"]] == str(run_dir) and attached[n["stop_button"]]["interactive"] is True
        shown = q.show_live()
        assert shown[n["run_dir"]] == str(run_dir) and shown[n["timer"]].active is True
        assert shown[n["tabs"]].selected == "training"
        stopping = q.stop()
        assert "Stopping first" in stopping[n["queue_message"]]
        item = _wait(lambda: next((i for i in queue.items() if i.id == first.id and i.status not in ("running", "pending")), None), timeout=120)
    finally:
        from loratrainer.launch.processes import kill_all

        for queued in queue.items():
            if queued.run_dir:
                kill_all(queued.run_dir)
    assert item.status == "stopped", item
    assert (tmp_path / "a" / "out" / "first-interrupted.safetensors").is_file()
    from loratrainer.launch.queue_runner import runner_running

    _wait(lambda: not runner_running(queue), timeout=60)  # the runner stopped with its run
    assert [i.status for i in queue.items()] == ["stopped", "pending"]  # the next run stays pending
    out = h.refresh(str(run_dir), -1)
    assert "first-interrupted.safetensors" in out[n["status"]] and out[n["resume_button"]]["visible"] is True


# -- Results ---------------------------------------------------------------------------------------------------


def test_results_moves_to_a_new_run_by_itself_and_a_resumed_run_names_the_run_it_continued(page, tmp_path):
    r, n = page.handlers["results"], page.named
    first, state = _stopped_run(tmp_path / "one", "first", with_state=True)
    page.jobs._remember(first)
    shown = r.keep_run(None, None)
    assert shown[n["results_run"]]["value"] == str(first)
    newest_seen = shown[n["results_newest"]]
    # a second run starts (Start, or Resume then Start); the user opens the Results tab again: it shows the new run
    second = run_folder(tmp_path / "two", "first", ("started", {"total_steps": 8, "epochs": 2, "pid": 999999, "resumed_from": str(state),
                                                                 "resumed_step": 3}))
    page.jobs._remember(second)
    shown = r.keep_run(str(first), newest_seen)
    assert shown[n["results_run"]]["value"] == str(second)
    assert f"This run continued run `{first.name}` from its saved state `{state}`." in shown[n["results_summary"]]
    # the user chose the older run again: it stays chosen while no newer run starts
    assert r.keep_run(str(first), shown[n["results_newest"]])[n["results_run"]]["value"] == str(first)


def test_results_follows_a_run_started_while_the_tab_is_open_unless_an_older_run_was_chosen(page, tmp_path):
    """Issue 22 item 14: with the Results tab open (no Refresh, no reopening), its timer lists a newly started run
    and shows it when the newest run was shown; a user who chose an older run keeps it (the list still grows)."""
    import gradio as gr

    r, n = page.handlers["results"], page.named
    older, _ = _stopped_run(tmp_path / "a", "older", with_state=False)
    page.jobs._remember(older)
    newest, _ = _stopped_run(tmp_path / "b", "newest", with_state=False)
    page.jobs._remember(newest)
    shown = r.keep_run(None, None)  # the tab is open, showing the newest run
    seen = shown[n["results_newest"]]
    assert shown[n["results_run"]]["value"] == seen == str(newest)
    assert r.follow_newest(str(newest), seen) == gr.skip()  # no new run: nothing is sent, nothing is read
    # a run starts (Start, the queue or the CLI) while the tab stays open: the next tick shows it
    started = run_folder(tmp_path / "c", "started", ("started", {"total_steps": 8, "epochs": 2, "pid": 999999}))
    page.jobs._remember(started)
    tick = r.follow_newest(str(newest), seen)
    assert tick[n["results_run"]]["value"] == str(started) and tick[n["results_newest"]] == str(started)
    assert str(started) in [v for _, v in tick[n["results_run"]]["choices"]]
    assert n["results_summary"] in tick  # the run itself is shown, not only listed
    # the user had chosen an older run on purpose: a new run is listed, the choice stays and nothing is redrawn
    again = run_folder(tmp_path / "d", "again", ("started", {"total_steps": 8, "epochs": 2, "pid": 999999}))
    page.jobs._remember(again)
    tick = r.follow_newest(str(older), str(started))
    assert tick[n["results_run"]]["value"] == str(older) and tick[n["results_newest"]] == str(again)
    assert str(again) in [v for _, v in tick[n["results_run"]]["choices"]] and n["results_summary"] not in tick
    assert r.follow_newest(str(older), str(again)) == gr.skip()
    # Refresh moved to the newest run (without telling the timer): a run started after that is followed
    third = run_folder(tmp_path / "e", "third", ("started", {"total_steps": 8, "epochs": 2, "pid": 999999}))
    page.jobs._remember(third)
    assert r.follow_newest(str(again), str(started))[n["results_run"]]["value"] == str(third)
