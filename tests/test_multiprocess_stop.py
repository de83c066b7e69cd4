"""Issue 13: stopping a multi-process run leaves no process behind, whichever way it is stopped.

torchrun (under `accelerate launch`) starts every worker in a session of its own, so these tests kill real
2-process gloo runs on the CPU each way (accelerate's group SIGKILLed, the whole run killed, Ctrl-C twice on the
CLI) and then search the whole process table for anything of the run.
"""

from __future__ import annotations

from tests.test_train_support import small_config, start_with_env, tiny_model  # noqa: F401  (first: hides a broken torchvision)

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
from loratrainer.config import save_config, with_values
from loratrainer.launch import processes, start as launch
from loratrainer.run import records

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc").is_dir(), reason="scans /proc")]
ROOT = Path(__file__).resolve().parent.parent


def _everything_of(run_dir: Path) -> list[str]:
    """Every live process on this machine that belongs to the run: its command line names the run folder, or it
    is in a process group recorded in processes/ (a worker's data loaders). Read straight from /proc."""
    groups = {json.loads(p.read_text())["pgid"] for p in (run_dir / run_files.PROCESSES_DIR).glob("*.json")}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] in ("Z", "X"):
            continue
        if str(run_dir) in cmdline or int(fields[2]) in groups:
            found.append(f"pid {entry.name} group {fields[2]}: {cmdline[:200]}")
    return found


def _none_left(run_dir: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout  # the kernel reaps the last ones a moment after the signal
    while _everything_of(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _everything_of(run_dir) == []


def _wait_for_workers_and_a_step(out: Path, workers: int = 2, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_dir in (out / "log").glob("*"):
            recorded = list((run_dir / run_files.PROCESSES_DIR).glob("rank-*.json"))
            stepped = any(e["event"] == "progress" for e in events.read_events(run_dir / run_files.EVENTS_FILE)[0])
            if len(recorded) == workers and stepped:
                return run_dir
        time.sleep(0.2)
    raise AssertionError(f"no 2-process training step within {timeout} s")


def _two_process_config(tmp_path, tiny_model, port: int):
    return small_config(tmp_path, tiny_model, images=4, num_processes=2, main_process_port=port, epoch=500)


def test_killing_accelerate_leaves_workers_that_block_a_new_run_until_stopped(tmp_path, tiny_model):
    config = _two_process_config(tmp_path, tiny_model, 29751)
    run = start_with_env(config)
    try:
        run_dir = _wait_for_workers_and_a_step(tmp_path / "out")
        recorded = records.read_records(run_dir)
        workers = [r for r in recorded if r.role == "worker"]
        assert sorted(r.rank for r in workers) == [0, 1] and all(r.pgid == r.pid for r in workers)  # own sessions
        assert [r.pid for r in recorded if r.role == "launcher"] == [run.pid]
        os.killpg(run.pid, signal.SIGKILL)  # accelerate launch and its process group: not the workers
        run.popen.wait(timeout=30)
        time.sleep(1)
        orphans = [r for r in workers if records.is_alive(r)]
        assert len(orphans) == 2  # what the issue saw: they train on
        assert run.poll() is None  # so the run is not over ...
        with pytest.raises(launch.LaunchRefused, match="still going"):  # ... and no second run may write there
            launch.start_run(with_values(config, {"existing_output": "rename"}))  # (else: "last.safetensors exists")
        assert run.stop(stop_grace_s=120, term_grace_s=15) == "stopped"  # the STOP file reaches the orphans
    finally:
        run.kill()
    _none_left(run_dir)
    assert events.read_events(run_dir / run_files.EVENTS_FILE)[0][-1]["status"] == "stopped"
    assert (tmp_path / "out" / "last-interrupted.safetensors").is_file()


def test_killing_the_run_kills_every_worker_and_its_data_loaders(tmp_path, tiny_model):
    config = small_config(tmp_path, tiny_model, images=4, num_processes=2, main_process_port=29753, epoch=500,
                          max_data_loader_n_workers=1, persistent_data_loader_workers=True)
    run = start_with_env(config)
    try:
        run_dir = _wait_for_workers_and_a_step(tmp_path / "out")
        groups = {r.pgid for r in records.read_records(run_dir) if r.role == "worker"}
        loaders = [pid for g in groups for pid in processes.group_members(g) if pid not in groups]
        assert loaders  # the test sees the data loader processes it must not leave behind
        killed = time.monotonic()
        run.kill()
        assert run.wait(timeout=30) != 0 and time.monotonic() - killed < 30
    finally:
        run.kill()
    _none_left(run_dir)


def test_ctrl_c_twice_on_the_cli_leaves_nothing(tmp_path, tiny_model):
    config = _two_process_config(tmp_path, tiny_model, 29755)
    save_config(config, tmp_path / "config.json")
    cli = subprocess.Popen([sys.executable, "-m", "loratrainer", "train", "--config", str(tmp_path / "config.json")],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        run_dir = _wait_for_workers_and_a_step(tmp_path / "out")
        os.killpg(cli.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole foreground group
        time.sleep(0.5)
        os.killpg(cli.pid, signal.SIGINT)  # and again, before the LoRA is saved: kill
        output = cli.communicate(timeout=60)[0]
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    assert "stopping: saving the current LoRA" in output and "run folder:" in output, output[-3000:]
    _none_left(run_dir)


def test_stop_escalates_from_stop_file_to_sigterm_to_sigkill(tmp_path):
    # stand-in workers in sessions of their own that ignore STOP, one also SIGTERM; nothing but /proc knows them
    run_dir = (tmp_path / "run").absolute()
    run_dir.mkdir()
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.1)\n"
    polite = "import time\nwhile True: time.sleep(0.1)\n"
    procs = [subprocess.Popen([sys.executable, "-c", code, "-m", processes.ENTRY_MODULE, "--run-dir", str(run_dir)],
                              start_new_session=True) for code in (stubborn, polite)]
    try:
        time.sleep(0.5)
        assert sorted(processes.live_processes(run_dir)) == sorted(p.pid for p in procs)
        assert processes.stop_all(run_dir, stop_grace_s=0.5, term_grace_s=1) == "killed"
        assert (run_dir / run_files.STOP_FILE).is_file()
        assert procs[1].wait(timeout=5) == -signal.SIGTERM and procs[0].wait(timeout=5) == -signal.SIGKILL
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert processes.live_processes(run_dir) == {} and processes.stop_all(run_dir) == "not running"


def test_a_recorded_pid_now_used_by_another_program_is_not_ours(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        record = records.ProcessRecord("worker", other.pid, other.pid, (records.start_ticks(other.pid) or 0) + 1,
                                         __import__("socket").gethostname())
        assert not records.is_alive(record)  # same pid, other start time: never signalled
        assert records.is_alive(records.ProcessRecord(**{**record.__dict__, "start": records.start_ticks(other.pid)}))
    finally:
        other.kill()
        other.wait()


def test_more_processes_than_cpu_cores_are_refused_before_launch(tmp_path, monkeypatch):
    from tests.test_launch import _config

    monkeypatch.setattr(launch, "usable_gpus", lambda config: 0)
    monkeypatch.setattr(launch, "usable_cpus", lambda: 2)
    with pytest.raises(launch.LaunchRefused, match="launch.num_processes = 64 .*only 2 CPU core"):
        launch.preflight(_config(tmp_path, num_processes=64))
    assert not (tmp_path / "out" / "log").exists()  # refused before any run folder
    monkeypatch.setattr(launch, "usable_gpus", lambda config: 2)
    with pytest.raises(launch.LaunchRefused, match="launch.num_processes = 4 .*2 usable GPU"):
        launch.check_num_processes(_config(tmp_path, num_processes=4))
    launch.check_num_processes(_config(tmp_path, num_processes=2))  # one per GPU: fine
    launch.check_num_processes(_config(tmp_path, num_processes=4, num_machines=2, main_process_ip="10.0.0.1"))  # 2 here


def test_sixty_four_processes_on_this_machine_are_refused_by_the_cli(tmp_path):
    # the real check on the real machine (this test machine has no CUDA and fewer than 64 cores)
    from tests.test_launch import _config

    if launch.usable_cpus() >= 64:
        pytest.skip("a machine with 64 cores")
    save_config(_config(tmp_path), tmp_path / "config.json")
    proc = subprocess.run([sys.executable, "-m", "loratrainer", "train", "--config", str(tmp_path / "config.json"),
                           "--set", "num_processes=64"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "launch.num_processes = 64" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "log").exists()
