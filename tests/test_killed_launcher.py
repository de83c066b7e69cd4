"""kill -9 of `loratrainer train` or of `loratrainer queue run` (docs/reliability.md "Queue and killed
processes"): the trainer, in a session of its own, used to train and save on with nobody to stop it, and the
queue let the item be removed and a second run start beside it. Now the trainer notices its launcher is gone
(train/launcher_watch.py: a poll of the launcher's pid and start time), saves `-interrupted` as on Stop and ends;
the queue treats a trainer that still runs as running. Real processes, real SIGKILL."""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratrainer.run import events
from loratrainer.config import save_config
from loratrainer.launch import processes
from loratrainer.run import files as run_files
from loratrainer.launch.run_queue import RUNNING, QueueError, RunQueue

ROOT = Path(__file__).resolve().parent.parent


def _first_step(log_dir: Path, deadline_s: float = 240) -> Path:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for d in log_dir.glob("*") if log_dir.is_dir() else ():
            if any(e["event"] == "progress" for e in events.read_events(d / run_files.EVENTS_FILE)[0]):
                return d
        time.sleep(0.2)
    raise AssertionError("the run never trained a step")


def _ended(run_dir: Path, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = [e for e in events.read_events(run_dir / run_files.EVENTS_FILE)[0] if e["event"] == "ended"]
        if ended and not processes.alive(run_dir):
            return ended[0]
        time.sleep(0.3)
    raise AssertionError(f"the run did not end after its launcher was killed: {processes.live_processes(run_dir)}")


def _leave_nothing(owner: subprocess.Popen, run_dir) -> None:
    """Whatever the test saw: the killed owner gone and every process of its run ended."""
    if owner.poll() is None:
        owner.kill()
    if run_dir is not None:
        processes.kill_all(run_dir)


def test_kill_9_of_the_cli_stops_its_run_as_stop_does(tmp_path, tiny_model):
    config = small_config(tmp_path, tiny_model, epoch=500, save_every_n_epochs=0)
    save_config(config, tmp_path / "config.json")
    cli = subprocess.Popen([sys.executable, "-m", "loratrainer", "train", "--config", str(tmp_path / "config.json")],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = None
    try:
        run_dir = _first_step(tmp_path / "out" / "log")
        os.kill(cli.pid, signal.SIGKILL)  # the CLI alone: accelerate and the trainer run in a session of their own
        cli.wait(timeout=30)
        ended = _ended(run_dir)
    finally:
        _leave_nothing(cli, run_dir)
    assert ended["status"] == "stopped", ended
    assert (tmp_path / "out" / f"{config.folders.output_name}-interrupted.safetensors").is_file()
    assert "is gone" in (run_dir / run_files.STOP_FILE).read_text()


def test_kill_9_of_the_queue_runner_stops_its_run_and_the_queue_keeps_it_running_meanwhile(tmp_path, tiny_model):
    home = tmp_path / "config"
    queue = RunQueue(home)
    queue.add(small_config(tmp_path / "a", tiny_model, epoch=500, save_every_n_epochs=0))
    queue.add(small_config(tmp_path / "b", tiny_model, epoch=1))
    env = {**os.environ, "LORATRAINER_CONFIG_DIR": str(home)}
    runner = subprocess.Popen([sys.executable, "-m", "loratrainer", "queue", "run"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = None
    try:
        run_dir = _first_step(tmp_path / "a" / "out" / "log")
        # a stand-in trainer of this run that outlives the real one by a while: the queue must see it as running
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "loratrainer.train.entry",
                                   "--run-dir", str(run_dir)], start_new_session=True)
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=30)
        item = queue.items()[0]
        assert item.status == RUNNING
        with pytest.raises(QueueError, match="is running: stop it first"):
            queue.remove(item.id)  # removing it let a second run start beside the trainer
        assert queue.clear() == 1 and [i.status for i in queue.items()] == [RUNNING]  # only the pending one went
        holder.kill()
        holder.wait()
        ended = _ended(run_dir)
    finally:
        _leave_nothing(runner, run_dir)
    assert ended["status"] == "stopped", ended
    assert (tmp_path / "a" / "out" / "last-interrupted.safetensors").is_file()
    assert [i.status for i in queue.items()] == ["stopped"]


def test_the_owner_mark_this_process_writes_names_this_process(monkeypatch):
    """The mark carries the process helper's start time (a float since psutil): reading it back must give this
    process, or the trainer never watches its launcher (the merge of the two changes broke exactly this)."""
    from loratrainer.run import owner
    from loratrainer.run.records import start_ticks

    monkeypatch.delenv(owner.OWNER_ENV, raising=False)
    owner.own_runs_started_here()
    record = owner.owner_record(os.environ[owner.OWNER_ENV])
    assert record is not None and record.pid == os.getpid() and record.start == start_ticks(os.getpid())
    assert owner.owner_record("12:abc:host") is None and owner.owner_record("x:1.5:host") is None
