"""Issue 13: the queue of runs (a file in the user's config folder, a lock, a runner that survives being killed)."""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.config import TrainingConfig, save_config, with_values
from loratrainer.launch.run_queue import INTERRUPTED, PENDING, RUNNING, QueueError, RunQueue
from loratrainer.messages import Msg
from loratrainer.run import outcomes

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, config_dir: Path, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORATRAINER_CONFIG_DIR": str(config_dir)}
    proc = subprocess.run([sys.executable, "-m", "loratrainer", "queue", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _named(name: str) -> TrainingConfig:
    return with_values(TrainingConfig(), {"output_name": name})


def test_add_list_move_remove_clear_through_the_cli(tmp_path):
    save_config(_named("alpha"), tmp_path / "a.json")
    home = tmp_path / "config"
    _cli("add", str(tmp_path / "a.json"), config_dir=home)
    _cli("add", str(tmp_path / "a.json"), "--set", "output_name=beta", "--set", "network_dim=8", config_dir=home)
    queue = RunQueue(home)
    items = queue.items()
    assert [i.name for i in items] == ["alpha", "beta"] and [i.status for i in items] == [PENDING, PENDING]
    assert items[1].overrides == ["output_name=beta", "network_dim=8"] and items[1].config["network"]["network_dim"] == 8
    assert items[0].source == str(tmp_path / "a.json")
    listed = _cli("list", config_dir=home).stdout
    assert listed.index("alpha") < listed.index("beta") and "pending" in listed
    _cli("up", items[1].id, config_dir=home)
    assert [i.name for i in queue.items()] == ["beta", "alpha"]
    _cli("down", items[1].id, config_dir=home)
    _cli("down", items[1].id, config_dir=home)  # already last: stays there
    assert [i.name for i in queue.items()] == ["alpha", "beta"]
    _cli("remove", items[0].id, config_dir=home)
    assert [i.name for i in queue.items()] == ["beta"]
    bad = _cli("remove", "nosuchid", config_dir=home, check=False)
    assert bad.returncode != 0 and "no queued run with id nosuchid" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli("add", str(tmp_path / "a.json"), "--set", "network_dim=oops", config_dir=home, check=False)
    assert bad.returncode != 0 and "network_dim" in bad.stderr and len(queue.items()) == 1
    assert "removed 1 run(s)" in _cli("clear", config_dir=home).stdout and queue.items() == []
    assert json.loads((home / "queue.json").read_text()) == {"items": []}


def test_two_processes_adding_at_once_lose_nothing(tmp_path):
    # the lock: without it both read the same list and the last writer drops the other's items
    script = ("import sys; from loratrainer.launch.run_queue import RunQueue; from loratrainer.config import TrainingConfig, with_values\n"
              "q = RunQueue(sys.argv[1])\n"
              "for n in range(25): q.add(with_values(TrainingConfig(), {'output_name': f'{sys.argv[2]}{n}'}))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag], cwd=ROOT) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    names = [i.name for i in RunQueue(tmp_path).items()]
    assert sorted(names) == sorted([f"a{n}" for n in range(25)] + [f"b{n}" for n in range(25)])
    assert [n for n in names if n.startswith("a")] == [f"a{n}" for n in range(25)]  # each one's order kept
    assert not list(tmp_path.glob("*.partial"))  # atomic writes leave no temporary file


def test_a_run_left_running_by_a_gone_runner_is_interrupted_not_lost(tmp_path):
    # as after a reboot: the file says running, its runner's pid is gone (or now someone else's)
    queue = RunQueue(tmp_path)
    item = queue.add(_named("alpha"))
    queue.add(_named("beta"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    queue.update(item.id, status=RUNNING, runner={"pid": dead.pid, "start": 1, "host": os.uname().nodename},
                 run_dir=str(tmp_path / "gone-run"))
    items = queue.items()
    assert [i.status for i in items] == [INTERRUPTED, PENDING] and "runner ended" in items[0].reason
    queue.retry(item.id)
    assert queue.items()[0].status == PENDING


def test_a_running_item_cannot_be_removed(tmp_path):
    from loratrainer.launch.run_queue import this_runner

    queue = RunQueue(tmp_path)
    queue.add(_named("alpha"))
    claimed = queue.claim_next(this_runner())  # this test process is the live runner
    with pytest.raises(QueueError, match="is running: stop it first"):
        queue.remove(claimed.id)
    assert queue.clear() == 0 and queue.items()[0].status == RUNNING


def test_an_unreadable_queue_file_is_reported_and_kept(tmp_path):
    (tmp_path / "queue.json").write_text("{not json")
    with pytest.raises(QueueError, match="cannot be read"):
        RunQueue(tmp_path).items()
    assert (tmp_path / "queue.json").read_text() == "{not json"  # nothing lost


def test_a_runner_starting_while_the_page_asks_whether_one_runs_still_runs(tmp_path):
    """`runner_running` (the page asks it every refresh) holds the runner lock for an instant: a runner starting in that
    instant waits it out instead of taking it for another runner and quitting; a real runner still makes it give up."""
    import threading

    from loratrainer.launch.queue_runner import RUNNER_LOCK_WAIT_S
    from loratrainer.launch.run_queue import runner_lock

    with runner_lock(tmp_path) as probe:  # the page's probe, held here longer than it ever is
        assert probe
        with runner_lock(tmp_path) as mine:
            assert not mine  # without waiting: taken for another runner (what happened before)
        got: list[bool] = []

        def runner() -> None:
            with runner_lock(tmp_path, wait_s=RUNNER_LOCK_WAIT_S) as mine:
                got.append(mine)

        started = time.monotonic()
        t = threading.Thread(target=runner)
        t.start()  # the runner starts while the probe holds the lock
        time.sleep(0.3)
    t.join(10)  # the probe was released on leaving the block above
    assert got == [True] and time.monotonic() - started < RUNNER_LOCK_WAIT_S + 1
    with runner_lock(tmp_path) as held:  # a live runner holds it for its life: a second one gives up after the wait
        assert held
        started = time.monotonic()
        with runner_lock(tmp_path, wait_s=0.3) as second:
            assert not second and time.monotonic() - started >= 0.3


def test_a_stopped_run_s_reason_is_the_same_in_queue_list_and_the_gui_queue_column(tmp_path, monkeypatch, capsys):
    """One reason for both (run_queue.item_reason), from the run's events: a plain stop's `ended` event has no reason, so
    the queue said nothing after Stop; it says where the run stopped and what it saved, as the page's Queue column."""
    import io

    from loratrainer.gui.i18n import Translator
    from loratrainer.launch.queue_runner import _finish
    from loratrainer.launch.run_queue import item_reason, this_runner

    from loratrainer.cli import main

    home, run_dir = tmp_path / "config", tmp_path / "run"
    monkeypatch.setenv("LORATRAINER_CONFIG_DIR", str(home))

    def listed() -> str:  # `loratrainer queue list`, in this process
        capsys.readouterr()
        assert main(["queue", "list"]) == 0
        return capsys.readouterr().out

    queue = RunQueue(home)
    queue.add(_named("alpha"))
    item = queue.claim_next(this_runner())
    queue.update(item.id, run_dir=str(run_dir))
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        w.emit("started", total_steps=9, epochs=3, seed=1)
        w.emit("checkpoint", path=str(tmp_path / "out" / "alpha-interrupted.safetensors"), kind="interrupted", epoch=1, step=3)
        w.emit("ended", status="stopped", reason="", step=3, epoch=1, exit_code=10)
    said = io.StringIO()
    assert _finish(queue, queue.items()[0], run_dir, 10, said) == "stopped"
    sentence = "Stopped at step 3; saved alpha-interrupted.safetensors."
    assert queue.items()[0].reason == sentence and sentence in said.getvalue()  # recorded, and said by the runner
    item = queue.items()[0]
    assert Translator("en").message(item_reason(item)) == sentence  # the page's Queue column
    assert Translator("ko").message(item_reason(item)) == "3 스텝에서 중지했습니다. alpha-interrupted.safetensors 로 저장했습니다."
    queue.update(item.id, reason="")  # as an older runner recorded it: the list still says it, from the events
    assert sentence in listed()

    # a coded end reason (out of memory): the same sentence the page says after its status sentence, in English
    oom = Msg.of("run.oom_at", during=Msg.of("run.during.training"), step=3, batch=2, resolution=512)
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        w.emit("ended", status="oom", reason="out of GPU memory during training ...: lower train_batch_size", step=3,
               epoch=1, exit_code=12, msg=outcomes.to_event(oom))
    queue.update(item.id, status="oom")
    assert "It happened in a training step after 3 steps (batch size 2, resolution 512)." in listed()
    # Stop now kills the run: no `ended` event, the STOP_NOW file says it was asked
    run_dir2 = tmp_path / "run2"
    run_dir2.mkdir()
    (run_dir2 / run_files.STOP_NOW_FILE).write_text("stop now\n")
    queue.update(item.id, run_dir=str(run_dir2), status="stopped", reason="")
    assert "ended at once with Stop now: nothing more was saved" in listed()


# -- real runs ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_queued_runs_go_in_order_and_a_failing_one_does_not_stop_the_next(tmp_path, tiny_model):
    home = tmp_path / "config"
    first = small_config(tmp_path / "a", tiny_model, epoch=1)
    failing = with_values(small_config(tmp_path / "b", tiny_model, epoch=1), {"pretrained_model_name_or_path": str(tmp_path / "no-model")})
    third = small_config(tmp_path / "c", tiny_model, epoch=1, output_name="third")
    for name, config in (("a", first), ("b", failing), ("c", third)):
        save_config(config, tmp_path / f"{name}.json")
        _cli("add", str(tmp_path / f"{name}.json"), config_dir=home)
    run = _cli("run", config_dir=home, timeout=600, check=False)
    assert run.returncode == 1, run.stderr[-3000:]  # one failed
    items = RunQueue(home).items()
    assert [i.status for i in items] == ["finished", "failed", "finished"], [(i.status, i.reason) for i in items]
    assert items[1].failed and "no-model does not exist" in items[1].reason  # refused by the checks before the start
    assert items[0].ended <= items[1].started and items[1].ended <= items[2].started  # one after another, in order
    assert (tmp_path / "a" / "out" / "last.safetensors").is_file() and (tmp_path / "c" / "out" / "third.safetensors").is_file()
    assert items[1].reason and not list((tmp_path / "b" / "out").glob("*.safetensors"))
    assert "queue: done (1 failed)" in run.stderr


@pytest.mark.slow
def test_stop_on_failure_stops_the_queue(tmp_path):
    home = tmp_path / "config"
    queue = RunQueue(home)
    queue.add(with_values(TrainingConfig(), {"train_data_dir": str(tmp_path / "missing"), "output_dir": str(tmp_path / "out")}))
    queue.add(_named("later"))
    run = _cli("run", "--stop-on-failure", config_dir=home, timeout=120, check=False)
    assert run.returncode == 1 and "dataset check failed" in run.stderr
    assert [i.status for i in queue.items()] == ["failed", PENDING]


@pytest.mark.slow
def test_a_killed_runner_restarted_waits_for_its_run_then_goes_on_with_the_next(tmp_path, tiny_model):
    home = tmp_path / "config"
    queue = RunQueue(home)
    queue.add(small_config(tmp_path / "a", tiny_model, epoch=500, save_every_n_epochs=0))  # long enough that only the watch can end it
    queue.add(small_config(tmp_path / "b", tiny_model, epoch=1))
    env = {**os.environ, "LORATRAINER_CONFIG_DIR": str(home)}
    runner = subprocess.Popen([sys.executable, "-m", "loratrainer", "queue", "run"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        run_dir = None
        while time.monotonic() < deadline and run_dir is None:
            for d in (tmp_path / "a" / "out" / "log").glob("*"):
                if any(e["event"] == "progress" for e in events.read_events(d / run_files.EVENTS_FILE)[0]):
                    run_dir = d
            time.sleep(0.2)
        assert run_dir is not None, "the first run never trained"
        os.kill(runner.pid, signal.SIGKILL)  # the runner only: its run notices (train/launcher_watch.py) and stops
        runner.wait(timeout=30)
        items = queue.items()
        # while its trainer saves and ends it is still running (never interrupted while it goes)
        assert [i.status for i in items] in ([RUNNING, PENDING], ["stopped", PENDING])
        again = _cli("run", config_dir=home, timeout=600, check=False)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert again.returncode == 0, again.stderr[-3000:]
    items = queue.items()
    assert [i.status for i in items] == ["stopped", "finished"]  # stopped as on Stop, saved; the queue went on
    assert items[0].ended <= items[1].started
    assert len(list((tmp_path / "a" / "out" / "log").iterdir())) == 1  # the first run was not started twice
    assert (tmp_path / "a" / "out" / "last-interrupted.safetensors").is_file()
    assert (tmp_path / "b" / "out" / "last.safetensors").is_file()
