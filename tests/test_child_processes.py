"""machine/child_processes.py: every child process of the product starts and ends through it (a test per caller),
and on this machine real process trees end with real signals (a grandchild in a session of its own, as torchrun
starts workers; a child that ignores SIGTERM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import socket
import time
from pathlib import Path

import pytest

from loratrainer.launch import processes
from loratrainer.machine import child_processes
from loratrainer.run import records

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]

# a parent that starts two children and waits: one in its own group (as the parent's), one in a session of its
# own (torchrun's workers): a signal to the parent's group does not reach it, the tree walk does
FAMILY = ("import subprocess, sys, time\n"
          "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
          "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=sys.platform != 'win32')\n"
          "print(a.pid, b.pid, flush=True)\n"
          "time.sleep(60)\n")
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def _children(popen: subprocess.Popen) -> list[int]:
    return [int(p) for p in popen.stdout.readline().split()]


def _gone(pids, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(child_processes.alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_stop_ends_a_real_tree_with_a_grandchild_in_another_session():
    popen = child_processes.start([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE, text=True)
    try:
        kids = _children(popen)
        assert len(kids) == 2 and all(child_processes.alive(p) for p in kids)
        if sys.platform != "win32":
            assert os.getpgid(popen.pid) == popen.pid != os.getpgid(0)  # a session of its own, never ours
            assert os.getpgid(kids[1]) != popen.pid  # the grandchild left the group: only the tree finds it
        assert child_processes.stop(popen, term_grace_s=5) == "terminated"
        assert _gone([popen.pid, *kids]) and popen.returncode is not None
    finally:
        child_processes.kill([popen.pid, *kids])


def test_a_child_that_ignores_terminate_is_killed():
    popen = child_processes.start([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert popen.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert child_processes.stop(popen, term_grace_s=1) == "killed"
    assert time.monotonic() - started < 10 and not child_processes.alive(popen.pid)
    if sys.platform != "win32":
        assert popen.returncode == -9
    assert child_processes.stop(popen) == "not running"


def test_a_reused_pid_is_not_ours_and_is_never_signalled():
    other = subprocess.Popen(SLEEPER)
    try:
        start = child_processes.start_time(other.pid)
        assert start is not None and child_processes.alive(other.pid, start)
        assert child_processes.same_start(start, child_processes.start_time(other.pid))  # stable across reads
        assert not child_processes.alive(other.pid, start + 0.5)  # same pid, another start: another program
        record = records.ProcessRecord("worker", other.pid, other.pid, start + 0.5, socket.gethostname())
        assert not records.is_alive(record)
        assert records.is_alive(records.ProcessRecord(**{**record.__dict__, "start": start}))
    finally:
        other.kill()
        other.wait()
    assert not child_processes.alive(other.pid, start) and child_processes.start_time(other.pid) is None


def test_kill_self_ends_the_process_as_a_kill_would():
    code = "from loratrainer.machine import child_processes; child_processes.kill_self(); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert "survived" not in done.stdout
    assert done.returncode == (-9 if sys.platform != "win32" else done.returncode) and done.returncode != 0


def test_find_matches_argument_lists_and_never_this_process(tmp_path):
    marker = str(tmp_path / "marker")
    popen = child_processes.start([*SLEEPER, "--run-dir", marker])
    try:
        deadline = time.monotonic() + 10
        while popen.pid not in child_processes.find(lambda argv: marker in argv) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child_processes.find(lambda argv: marker in argv) == [popen.pid]
        assert os.getpid() not in child_processes.find(lambda argv: True)
    finally:
        child_processes.stop(popen, term_grace_s=2)


def test_a_shell_line_is_refused():
    with pytest.raises(ValueError):
        child_processes.start(["echo hi"], shell=True)


# -- every caller goes through the helper ------------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    """Records each call into child_processes and starts a sleeper instead of the real program."""
    calls: list[tuple[str, object]] = []
    real_start, real_stop, real_terminate, real_kill = (child_processes.start, child_processes.stop,
                                                        child_processes.terminate, child_processes.kill)

    def start(argv, **kwargs):
        calls.append(("start", list(argv)))
        kwargs = {k: v for k, v in kwargs.items() if k != "env"}
        return real_start(SLEEPER, **kwargs)

    def stop(popen, term_grace_s=10.0):
        calls.append(("stop", popen.pid))
        return real_stop(popen, term_grace_s=min(term_grace_s, 2))

    def terminate(pids, groups=()):
        pids = list(pids)
        calls.append(("terminate", pids))
        return real_terminate(pids, groups)

    def kill(pids, groups=()):
        pids = list(pids)
        calls.append(("kill", pids))
        return real_kill(pids, groups)

    for name, fn in (("start", start), ("stop", stop), ("terminate", terminate), ("kill", kill)):
        monkeypatch.setattr(child_processes, name, fn)
    return calls


def test_training_runs_start_and_are_killed_through_the_helper(spy, tmp_path, monkeypatch):
    from loratrainer.launch import start as launch
    from tests.test_launch import _config

    run = launch.start_run(_config(tmp_path), check=False)
    assert spy[0][0] == "start" and "loratrainer.train.entry" in spy[0][1]
    assert processes.read_records(run.run_dir)[0].start is not None  # the launcher's record: pid + start time
    run.kill()
    assert ("kill", [run.pid]) in spy and _gone([run.pid]) and run.wait(timeout=10) != 0


def test_the_gui_kills_a_run_it_did_not_start_through_the_helper(spy, tmp_path):
    from loratrainer.gui import jobs

    other = child_processes.start(SLEEPER)  # as a run the GUI did not start (the page was reloaded)
    assert jobs._alive(other.pid)
    manager = jobs.Jobs.__new__(jobs.Jobs)
    manager._processes = {}
    manager._follow = lambda run_dir: type("F", (), {"pid": other.pid})()
    manager.kill(tmp_path)
    assert ("kill", [other.pid]) in spy and _gone([other.pid]) and not jobs._alive(other.pid)
    other.wait()


def test_the_queue_runner_starts_through_the_helper(spy, tmp_path):
    from loratrainer.launch import queue_runner
    from loratrainer.launch.run_queue import RunQueue

    pid = queue_runner.start_detached(RunQueue(tmp_path / "q"))
    assert spy == [("start", [sys.executable, "-m", "loratrainer", "queue", "run"])]
    assert child_processes.kill([pid]) and _gone([pid])


def test_compare_renders_start_and_cancel_through_the_helper(spy, tmp_path):
    from loratrainer.compare.process import Renders

    renders = Renders()
    render = renders.start(["--run", str(tmp_path)], tmp_path / "grid.png")
    assert spy[0][0] == "start" and spy[0][1][1:4] == ["-m", "loratrainer", "compare"]
    assert renders.cancel() and ("stop", render.popen.pid) in spy and not render.running


def test_lora_tools_start_and_cancel_through_the_helper(spy):
    from loratrainer.gui.tab_lora_tools import ToolProcess

    tool = ToolProcess(["inspect", "x.safetensors"])
    assert spy[0][0] == "start" and spy[0][1][1:5] == ["-m", "loratrainer", "lora", "inspect"]
    tool.cancel()
    assert ("terminate", [tool.proc.pid]) in spy and tool.wait(10) is not None


def test_tensorboard_and_the_file_manager_start_through_the_helper(spy, tmp_path, monkeypatch):
    from loratrainer.gui import external_programs as tools

    boards = tools.TensorBoards()
    with pytest.raises(RuntimeError):
        boards.url_for(tmp_path, timeout=0.5)  # the sleeper never answers
    assert spy[0][0] == "start" and spy[0][1][1:3] == ["-m", "tensorboard.main"]
    popen = boards.running[tmp_path][0]
    boards.close()
    assert ("stop", popen.pid) in spy and popen.poll() is not None
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("DISPLAY", ":0")
        assert tools.open_folder(tmp_path)
        assert spy[-1] == ("start", ["xdg-open", str(tmp_path)])


def test_the_trainers_kill_fault_goes_through_the_helper(monkeypatch, tmp_path):
    from loratrainer.train import faults

    called = []
    monkeypatch.setattr(child_processes, "kill_self", lambda: called.append(True) or (_ for _ in ()).throw(SystemExit(137)))
    monkeypatch.setenv(faults.FAULT_ENV, "kill@save1")
    monkeypatch.setenv(faults.TEST_MODE_ENV, "1")
    with pytest.raises(SystemExit), faults.during_save(1, tmp_path / "x"):
        with open(tmp_path / "x", "wb") as fh:
            os.fsync(fh.fileno())
    assert called == [True]


def test_no_posix_only_process_call_outside_the_helper():
    """signal.SIGKILL, os.killpg and os.getpgid (and /proc reads for processes) live in child_processes only."""
    root = Path(__file__).resolve().parents[1] / "loratrainer"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "child_processes.py":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("signal.SIGKILL", "os.killpg", "os.getpgid", "/proc/{", 'Path("/proc")'):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []


def test_psutil_is_a_declared_dependency():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"psutil' in deps and json is not None


def test_stopping_a_run_escalates_through_the_helper(spy, tmp_path):
    """processes.stop_all (the GUI's and `loratrainer train`'s stop, RunProcess.stop): STOP file, terminate, kill."""
    import subprocess as sp

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stubborn = sp.Popen([sys.executable, "-c", STUBBORN, "-m", processes.ENTRY_MODULE, "--run-dir", str(run_dir)],
                        stdout=sp.PIPE, text=True, start_new_session=True)
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        assert processes.stop_all(run_dir, stop_grace_s=0.3, term_grace_s=0.5) == "killed"
        kinds = [kind for kind, _ in spy]
        assert kinds.index("terminate") < kinds.index("kill") and ("terminate", [stubborn.pid]) in spy
        assert (run_dir / "STOP").exists() and stubborn.wait(timeout=10) == -9
    finally:
        stubborn.kill()


def test_a_tensorboard_that_exits_at_once_is_said_in_one_sentence_with_its_exit_code(tmp_path, monkeypatch):
    """TensorBoard started from Results and ended at once (a broken install): the page gets the coded sentence with
    the exit code, not a TypeError (its parameter was once named `code`, which Msg.of takes itself)."""
    from loratrainer.gui import external_programs

    real_start = child_processes.start
    monkeypatch.setattr(external_programs.child_processes, "start",
                        lambda argv, **kw: real_start([sys.executable, "-c", "import sys; sys.exit(3)"], **kw))
    boards = external_programs.TensorBoards()
    with pytest.raises(external_programs.TensorBoardFailed) as failed:
        boards.url_for(tmp_path, timeout=20)
    assert str(failed.value.msg) == "TensorBoard exited with code 3"
