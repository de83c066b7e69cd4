"""Launching: the accelerate argv (no shell), the run folder, checks before launch, the process handle."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from loratrainer.run import events
from loratrainer.launch import processes
from loratrainer.run import files as run_files
from loratrainer.config import TrainingConfig, load_config, with_values
from loratrainer.launch import start as launch
from tests.datasets import make_dataset


def _config(tmp_path: Path, **values) -> TrainingConfig:
    data = make_dataset(tmp_path / "image", {"2_thing": 2})
    base = {"train_data_dir": str(data), "output_dir": str(tmp_path / "out"), "max_resolution": "64,64", "min_bucket_reso": 64}
    return with_values(TrainingConfig(), {**base, **values})


def test_build_command_single_process(tmp_path):
    argv = launch.build_command(_config(tmp_path, mixed_precision="bf16", num_cpu_threads_per_process=4), tmp_path / "run")
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[3:13] == ["--mixed_precision", "bf16", "--num_processes", "1", "--num_machines", "1",
                          "--num_cpu_threads_per_process", "4", "--dynamo_backend", "no"]
    assert "--multi_gpu" not in argv and "--gpu_ids" not in argv and "--main_process_port" not in argv
    assert argv[-4:] == ["-m", "loratrainer.train.entry", "--run-dir", str(tmp_path / "run")]


def test_build_command_multi_gpu_flags(tmp_path):
    config = _config(tmp_path, num_processes=2, multi_gpu=True, gpu_ids="0, 1", main_process_port=29555, num_machines=1)
    argv = launch.build_command(config, "/r")
    assert "--multi_gpu" in argv
    assert argv[argv.index("--gpu_ids") + 1] == "0,1" and argv[argv.index("--main_process_port") + 1] == "29555"
    assert argv[argv.index("--num_processes") + 1] == "2"


def test_a_hostile_name_stays_one_literal_argument(tmp_path):
    config = _config(tmp_path, output_name="$(touch x); rm -rf ~")
    run_dir = launch.create_run(config)
    argv = launch.build_command(config, run_dir)
    assert str(run_dir) in argv and run_dir.name.startswith("$(touch x); rm -rf ~_")
    assert all(isinstance(a, str) for a in argv)


def test_create_run_writes_the_resolved_config(tmp_path):
    config = _config(tmp_path, network_dim=16)
    run_dir = launch.create_run(config)
    assert run_dir.parent == tmp_path / "out" / "log" and run_dir.name.startswith("last_")
    assert load_config(run_dir / run_files.CONFIG_FILE) == config
    second = launch.create_run(config)  # same second: a distinct folder
    assert second != run_dir
    logged = launch.create_run(with_values(config, {"logging_dir": str(tmp_path / "logs")}))
    assert logged.parent == tmp_path / "logs"


def test_existing_output_is_refused_or_renamed(tmp_path):
    config = _config(tmp_path)
    (tmp_path / "out").mkdir()
    assert launch.resolve_output_name(config) is config
    (tmp_path / "out" / "last-000001.safetensors").write_bytes(b"x")
    with pytest.raises(launch.LaunchRefused, match="will not be overwritten"):
        launch.resolve_output_name(config)
    renamed = launch.resolve_output_name(with_values(config, {"existing_output": "rename"}))
    assert renamed.folders.output_name == "last_2"


def test_output_folder_problems_are_refused(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(launch.LaunchRefused, match="cannot write"):
        launch.check_output_dir(_config(tmp_path, output_dir=str(blocker / "sub")), 0)
    monkeypatch.setattr(launch.shutil, "disk_usage", lambda p: type("U", (), {"free": 10 * 1024 * 1024})())
    with pytest.raises(launch.LaunchRefused, match="not enough free disk space"):
        launch.check_output_dir(_config(tmp_path), 200 * 1024 * 1024)


def test_preflight_refuses_a_bad_dataset_with_the_report(tmp_path):
    config = with_values(_config(tmp_path), {"train_data_dir": str(tmp_path / "missing")})
    with pytest.raises(launch.LaunchRefused, match="dataset check failed"):
        launch.preflight(config)


def test_run_process_stop_file_and_group_kill(tmp_path, monkeypatch):
    script = "import os, time; open('child.pid', 'w').write(str(os.getpid())); time.sleep(60)"
    monkeypatch.setattr(launch, "build_command", lambda config, run_dir: [sys.executable, "-c", script])
    monkeypatch.chdir(tmp_path)
    run = launch.start_run(_config(tmp_path), check=False)
    assert run.poll() is None and json.loads((run.run_dir / run_files.COMMAND_FILE).read_text())["argv"][1] == "-c"
    run.request_stop()
    assert (run.run_dir / run_files.STOP_FILE).exists() and run_files.stop_requested(run.run_dir)
    if os.name == "posix":
        assert os.getpgid(run.pid) == run.pid  # its own process group
    run.kill()
    assert run.wait(timeout=10) == 137  # 128 + SIGKILL, as a shell reports it (was -9, exit status 247)
    assert events.describe_exit(run.wait()) == "killed (signal 9)"


def test_exit_code_comes_from_the_ended_event(tmp_path, monkeypatch):
    # accelerate launch exits 1 for any failing child: the trainer's own code is read from events.jsonl
    script = ("import json, sys; run = sys.argv[1]; "
              "open(run + '/events.jsonl', 'w').write(json.dumps({'event': 'ended', 'status': 'nan', 'exit_code': 11}) + '\\n'); sys.exit(1)")
    monkeypatch.setattr(launch, "build_command", lambda config, run_dir: [sys.executable, "-c", script, str(run_dir)])
    run = launch.start_run(_config(tmp_path), check=False)
    assert run.wait(timeout=30) == 11 and run.poll() == 11


def test_print_command_starts_nothing(tmp_path, capsys):
    from loratrainer.cli import main
    from loratrainer.config import save_config

    save_config(_config(tmp_path, optimizer="AdamW"), tmp_path / "c.json")
    assert main(["train", "--config", str(tmp_path / "c.json"), "--set", "num_processes=2", "--print-command"]) == 0
    line = capsys.readouterr().out.strip()
    assert "accelerate.commands.launch" in line and "--multi_gpu" in line and "loratrainer.train.entry" in line
    # the preflight ran (it checks the output folder as Start does), but no run folder was made and nothing started
    assert str(tmp_path / "out" / "log" / "last_<YYYYmmdd-HHMMSS>") in line
    assert not list((tmp_path / "out").glob("log/last_*"))




def test_a_trainer_that_cannot_start_still_ends_the_stream(tmp_path):
    import subprocess

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / run_files.CONFIG_FILE).write_text('{"training": {"epoch": -1}}')
    proc = subprocess.run([sys.executable, "-m", "loratrainer.train.entry", "--run-dir", str(run_dir)], capture_output=True, timeout=60)
    assert proc.returncode == 1
    ended = events.read_events(run_dir / run_files.EVENTS_FILE)[0][-1]
    assert ended["event"] == "ended" and ended["status"] == "error" and "epoch" in ended["reason"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_becomes_a_stop_request(tmp_path):
    import signal

    from loratrainer.train.entry import stop_on_signals

    old = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_signals(tmp_path)
        os.kill(os.getpid(), signal.SIGTERM)
        assert run_files.stop_requested(tmp_path)
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("tty", [True, False])
def test_follow_shows_progress_and_returns_the_trainers_code(tmp_path, monkeypatch, tty):
    import io

    from loratrainer.launch.follow import follow

    script = ("import json, sys, time; p = sys.argv[1] + '/events.jsonl'\n"
              "def emit(**e):\n    open(p, 'a').write(json.dumps(e) + '\\n')\n"
              "emit(event='started', total_steps=2, epochs=1, seed=5)\n"
              "emit(event='progress', step=1, total_steps=2, epoch=1, epochs=1, loss=0.5, avg_loss=0.5, lr=1e-4)\n"
              "emit(event='checkpoint', path='/o/x.safetensors', kind='final', epoch=1, step=2)\n"
              "emit(event='ended', status='finished', reason='', step=2, epoch=1, exit_code=0)\n")
    monkeypatch.setattr(launch, "build_command", lambda config, run_dir: [sys.executable, "-c", script, str(run_dir)])
    run = launch.start_run(_config(tmp_path), check=False)

    class Stream(io.StringIO):
        def isatty(self):
            return tty

    out = Stream()
    assert follow(run, out, poll_s=0.05) == 0
    text = out.getvalue()
    assert "finished" in text and "saved /o/x.safetensors" in text and str(run.run_dir) in text
    if not tty:
        assert "step 1/2 epoch 1/1 loss 0.5000" in text


def test_bad_sample_prompts_are_refused_before_launch(tmp_path):
    config = _config(tmp_path, optimizer="AdamW", sample_every_n_steps=10, sample_prompts="a house --w 512\n# fine\na cat --q 3")
    with pytest.raises(launch.LaunchRefused, match="line 3: unknown option --q"):
        launch.preflight(config)
    launch.preflight(with_values(config, {"sample_every_n_steps": 0}))  # no sampling: the prompts are not read


def test_an_incomplete_state_folder_is_refused_before_launch(tmp_path):
    state = tmp_path / "last-state"
    state.mkdir()
    (state / "train_state.json").write_text("{}")
    (state / "lora_weights.pt").write_bytes(b"x")
    with pytest.raises(launch.LaunchRefused, match=r"incomplete \(no optimizer.pt, rng_0.pt\)"):
        launch.check_resume(_config(tmp_path, resume=str(state)))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only (mode 555) folder anyway")
def test_a_read_only_output_folder_is_refused_naming_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(launch.LaunchRefused, match=f"cannot write to the output folder {out}"):
            launch.check_output_dir(_config(tmp_path), 0)
    finally:
        out.chmod(0o755)


def test_a_write_refused_by_the_file_system_is_refused_naming_the_folder(tmp_path, monkeypatch):
    # what a read-only mount or a folder of another user does, also for root (where chmod 555 stops nothing)
    import errno

    def refuse(self, data):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    config = _config(tmp_path)
    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(launch.LaunchRefused, match=f"cannot write to the output folder {tmp_path / 'out'}: Read-only file system"):
        launch.check_output_dir(config, 0)


def test_an_unwritable_logging_folder_is_refused_before_launch(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = _config(tmp_path, optimizer="AdamW", logging_dir=str(blocker / "logs"))
    with pytest.raises(launch.LaunchRefused, match=f"cannot write to the logging folder {blocker / 'logs'}"):
        launch.preflight(config)


def test_too_little_disk_names_the_folder_and_the_space_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(launch.shutil, "disk_usage", lambda p: type("U", (), {"free": 50 * 1024 * 1024})())
    with pytest.raises(launch.LaunchRefused) as refused:
        launch.preflight(_config(tmp_path, optimizer="AdamW"))
    assert str(tmp_path / "out") in str(refused.value) and "50 MB free, about 1" in str(refused.value)


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_the_run_lasts_until_its_last_process_ends(tmp_path, monkeypatch):
    # SIGINT to the group: accelerate launch exits at once, the trainer still saves; the run is not over yet
    script = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
              "'import time, sys; time.sleep(1.5); open(sys.argv[1] + \"/late\", \"w\")', sys.argv[1]]); sys.exit(1)")
    monkeypatch.setattr(launch, "build_command", lambda config, run_dir: [sys.executable, "-c", script, str(run_dir)])
    run = launch.start_run(_config(tmp_path), check=False)
    run.popen.wait(timeout=30)
    assert run.poll() is None and processes.group_members(run.pid)
    assert run.wait(timeout=30) == 1 and (run.run_dir / "late").exists() and run.poll() == 1
    assert processes.group_members(run.pid) == []


def test_a_trainer_killed_under_accelerate_reads_killed_signal_9(tmp_path, monkeypatch):
    # accelerate launch exits 1 when its child dies of a signal; console.log says which
    script = ("import sys; print(\"subprocess.CalledProcessError: Command '[python]' died with <Signals.SIGKILL: 9>.\"); "
              "sys.exit(1)")
    monkeypatch.setattr(launch, "build_command", lambda config, run_dir: [sys.executable, "-c", script])
    run = launch.start_run(_config(tmp_path), check=False)
    assert events.describe_exit(run.wait(timeout=30)) == "killed (signal 9)"
    torchrun = tmp_path / "console.log"
    torchrun.write_text("  exitcode  : -15 (pid: 123)\n")
    assert launch.child_signal(torchrun) == 15 and launch.child_signal(tmp_path / "none.log") is None


def test_fault_specs(monkeypatch):
    from loratrainer.train import faults

    monkeypatch.setenv("LORATRAINER_FAULT", "nan@3, disk_full@save2,kill@save,oom@sample,stop@4")
    assert [faults._fault(k) for k in ("nan", "disk_full", "kill", "oom", "stop", "other")] == [3, 2, 1, "sample", 4, None]
    assert faults.stop_after(3) and not faults.stop_after(4)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_ctrl_c_while_the_trainer_starts_is_a_stop_request_not_a_traceback(tmp_path, monkeypatch):
    import signal

    from loratrainer.train import entry

    def interrupted_load(path):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaching the run's group while torch still loads
        raise ValueError("config unreadable")

    monkeypatch.setattr(entry, "load_config", interrupted_load)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert entry.main(["--run-dir", str(tmp_path)]) == events.EXIT_CODES["error"]
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    assert run_files.stop_requested(tmp_path) and events.read_events(tmp_path / run_files.EVENTS_FILE)[0][-1]["event"] == "ended"


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sighup_to_the_cli_stops_the_run_even_when_the_terminal_is_gone(tmp_path, monkeypatch):
    # closing the terminal: SIGHUP, and writing to it fails; the stop must still be asked for and waited on
    import io
    import signal
    import threading

    from loratrainer.launch.follow import follow

    script = "import os, sys, time\nwhile not os.path.exists(sys.argv[1] + '/STOP'):\n    time.sleep(0.05)\n"
    monkeypatch.setattr(launch, "build_command", lambda config, run_dir: [sys.executable, "-c", script, str(run_dir)])
    run = launch.start_run(_config(tmp_path), check=False)

    class GoneTerminal(io.StringIO):
        hung_up = False

        def write(self, text):
            if self.hung_up:
                raise OSError(5, "Input/output error")
            return super().write(text)

    out = GoneTerminal()

    def hang_up():
        out.hung_up = True
        os.kill(os.getpid(), signal.SIGHUP)

    timer = threading.Timer(0.5, hang_up)
    timer.start()
    try:
        with pytest.raises(OSError):  # the last report cannot be printed either; the run has ended by then
            follow(run, out, poll_s=0.05)
    finally:
        timer.cancel()
        stopped = run_files.stop_requested(run.run_dir)
        run.kill()
    assert stopped and run.wait(timeout=10) == 0 and processes.group_members(run.pid) == []
