"""Issue 4 end to end: stop by signal (CLI Ctrl-C to its process group, SIGTERM, SIGINT to the run's group),
resume equivalence with one and two resumes, and the injected faults a user must be able to trust."""

from __future__ import annotations

from tests.test_train_support import run_in_process, small_config, start_with_env, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.config import save_config, with_values
from loratrainer.launch.processes import group_members

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="POSIX signals and process groups")]
ROOT = Path(__file__).resolve().parent.parent


def _events(run_dir: Path) -> list[dict]:
    return events.read_events(run_dir / run_files.EVENTS_FILE)[0]


def _log(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in run_dir.glob("*.log"))


def _wait_for_step(out: Path, timeout: float = 180) -> Path:
    """The run folder once the trainer reported its first step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_dir in (out / "log").glob("*"):
            if any(e["event"] == "progress" for e in _events(run_dir)):
                return run_dir
        time.sleep(0.2)
    raise AssertionError(f"no training step within {timeout} s")


def _survivors(run_dir: Path, pgid: int) -> list[str]:
    """Processes of the run still alive: in its process group, or naming its run folder on their command line."""
    found = [f"pid {pid} (group {pgid})" for pid in group_members(pgid)]
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and str(run_dir) in cmdline and state not in ("Z", "X"):
            found.append(f"pid {entry.name}: {cmdline}")
    return found


def _assert_stopped_cleanly(out: Path, run_dir: Path, with_state: bool) -> None:
    evs = _events(run_dir)
    assert evs[-1]["event"] == "ended" and evs[-1]["status"] == "stopped", _log(run_dir)
    assert [e["kind"] for e in evs if e["event"] == "checkpoint"][-1:] == ["interrupted"]
    assert load_file(str(out / "last-interrupted.safetensors"))
    assert (out / "last-interrupted-state" / "train_state.json").is_file() == with_state
    started = next(e for e in evs if e["event"] == "started")
    deadline = time.monotonic() + 10  # the kernel reaps the last ones a moment after the exit
    while _survivors(run_dir, started["pgid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _survivors(run_dir, started["pgid"]) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_to_the_cli_process_group_stops_the_run(tmp_path, tiny_model, signum):
    # Ctrl-C in a terminal is SIGINT to the whole foreground process group; a service manager sends SIGTERM
    config = small_config(tmp_path, tiny_model, epoch=200, save_state=True)
    save_config(config, tmp_path / "config.json")
    cli = subprocess.Popen([sys.executable, "-m", "loratrainer", "train", "--config", str(tmp_path / "config.json")],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        run_dir = _wait_for_step(tmp_path / "out")
        signalled = time.monotonic()
        os.killpg(cli.pid, signum)
        output = cli.communicate(timeout=120)[0]
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    assert cli.returncode == events.EXIT_CODES["stopped"], output[-3000:]
    assert time.monotonic() - signalled < 60  # within seconds (a loaded 2-core test machine included)
    assert "stopping: saving the current LoRA" in output and "stopped" in output
    _assert_stopped_cleanly(tmp_path / "out", run_dir, with_state=True)


def test_sigint_to_the_runs_own_process_group_stops_it_and_loads_in_diffusers(tmp_path, tiny_model):
    # what `kill -INT -<pgid>` (the pgid of the started event) does: accelerate launch AND the trainer get it
    from diffusers import StableDiffusionPipeline

    config = small_config(tmp_path, tiny_model, epoch=200)
    run = start_with_env(config)
    run_dir = _wait_for_step(tmp_path / "out")
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait(timeout=120) == events.EXIT_CODES["stopped"], _log(run_dir)
    _assert_stopped_cleanly(tmp_path / "out", run_dir, with_state=False)
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path / "out" / "last-interrupted.safetensors"))
    assert any(hasattr(m, "lora_A") for m in pipe.unet.modules())


# -- resume ----------------------------------------------------------------------------------------------------

EVERY_STEP = {"LORATRAINER_PROGRESS_INTERVAL_S": "0"}  # an event per step, so whole sequences compare


def _trail(run_dir: Path) -> list[tuple[int, int, float]]:
    return [(e["step"], e["epoch"], e["lr"]) for e in _events(run_dir) if e["event"] == "progress"]


def _checkpoints(run_dir: Path) -> list[tuple[str, int, str]]:
    return [(e["kind"], e["step"], Path(e["path"]).name) for e in _events(run_dir) if e["event"] == "checkpoint"]


def _run(config, fault: str = "", monkeypatch=None) -> Path:
    """One run through accelerate launch; with `monkeypatch`, in this process (what is trained is the same; the
    launch and the process ending are tested above and in tests/test_train_e2e.py)."""
    if monkeypatch is None:
        run = start_with_env(config, {**EVERY_STEP, "LORATRAINER_FAULT": fault})
        code, run_dir = run.wait(timeout=300), run.run_dir
    else:
        monkeypatch.setenv("LORATRAINER_FAULT", fault)
        for name, value in EVERY_STEP.items():
            monkeypatch.setenv(name, value)
        out = Path(config.folders.output_dir) / "log"
        run_dir = out / f"run-{len(list(out.glob('run-*'))) + 1}"
        code = run_in_process(config, run_dir)
    assert code == (events.EXIT_CODES["stopped"] if fault else 0), _log(run_dir)
    return run_dir


def _assert_same_lora(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x), max(float((x[k] - y[k]).abs().max()) for k in x)


def test_resume_once_and_twice_matches_the_straight_run(tmp_path, tiny_model, monkeypatch):
    # 2 images x 2 repeats, batch 2: 2 steps per epoch, 4 steps; cosine so that every step has its own lr.
    # The five runs train in this process (the trainer's own entry.run_and_classify; stop@N through the test seam).
    config = small_config(tmp_path, tiny_model, images=2, lr_scheduler="cosine", save_precision="float",
                          save_state=True)
    straight = _run(with_values(config, {"output_dir": str(tmp_path / "straight")}), monkeypatch=monkeypatch)
    want = _trail(straight)
    assert [s for s, _, _ in want] == [1, 2, 3, 4] and len({lr for _, _, lr in want}) == 4

    # 2 + stop + resume + 2 (the stop at an epoch's end)
    out = tmp_path / "out"
    first = _run(config, "stop@2", monkeypatch)
    assert _checkpoints(first) == [("interrupted", 2, "last-interrupted.safetensors")]
    assert _events(first)[-1]["status"] == "stopped"
    resumed = _run(with_values(config, {"resume": str(out / "last-interrupted-state"), "output_dir": str(tmp_path / "once")}), monkeypatch=monkeypatch)
    assert _trail(first) + _trail(resumed) == want
    _assert_same_lora(straight.parent.parent / "last.safetensors", tmp_path / "once" / "last.safetensors")

    # 2 + stop + resume + 1 + stop + resume + 1 (the second stop mid-epoch), in one output folder
    second = _run(with_values(config, {"resume": str(out / "last-interrupted-state")}), "stop@3", monkeypatch)
    assert _checkpoints(second) == [("interrupted", 3, "last-interrupted-2.safetensors")]  # numbering continues
    third = _run(with_values(config, {"resume": str(out / "last-interrupted-2-state")}), monkeypatch=monkeypatch)
    assert _trail(first) + _trail(second) + _trail(third) == want
    assert _checkpoints(third)[-1] == ("final", 4, "last.safetensors") and _events(third)[-1]["epoch"] == 2
    _assert_same_lora(straight.parent.parent / "last.safetensors", out / "last.safetensors")


def test_a_state_with_a_truncated_optimizer_file_is_an_error_not_a_freshstart_with_env(tmp_path, tiny_model, monkeypatch):
    # both runs in this process: what is tested is how the trainer reads a state, not the launch
    config = small_config(tmp_path, tiny_model, images=2, epoch=1, save_state=True)
    _run(config, monkeypatch=monkeypatch)
    state = tmp_path / "out" / "last-state"
    optimizer = state / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    run_dir = tmp_path / "again" / "log" / "run"
    assert run_in_process(with_values(config, {"resume": str(state), "output_dir": str(tmp_path / "again")}), run_dir) == events.EXIT_CODES["error"]
    ended = _events(run_dir)[-1]
    assert ended["status"] == "error" and "damaged" in ended["reason"] and str(state) in ended["reason"]
    assert not [e for e in _events(run_dir) if e["event"] == "progress"]  # not one step trained
    assert not list((tmp_path / "again").glob("*.safetensors"))


# -- faults --------------------------------------------------------------------------------------------------


def test_a_kill_during_a_save_leaves_no_truncated_file_and_reads_killed_signal_9(tmp_path, tiny_model):
    config = small_config(tmp_path, tiny_model, epoch=3)
    run = start_with_env(config, {"LORATRAINER_FAULT": "kill@save2"})
    code = run.wait(timeout=300)
    assert events.describe_exit(code) == "killed (signal 9)", _log(run.run_dir)
    out = tmp_path / "out"
    assert [p.name for p in out.glob("*.safetensors")] == ["last-000001.safetensors"]  # nothing of save 2
    assert load_file(str(out / "last-000001.safetensors"))
    assert not [e for e in _events(run.run_dir) if e["event"] == "ended"]  # the trainer died mid-save
    assert group_members(run.pid) == []


def test_out_of_memory_while_sampling_names_the_phase_and_hangs_no_process(tmp_path, tiny_model):
    # two processes: the main one fails while rendering, the other must not wait for it forever
    config = small_config(tmp_path, tiny_model, images=4, num_processes=2, main_process_port=29741,
                          sample_every_n_steps=1, sample_prompts="a thing --w 64 --h 64 --s 1 --d 1")
    run = start_with_env(config, {"LORATRAINER_FAULT": "oom@sample"})
    assert run.wait(timeout=180) == events.EXIT_CODES["oom"], _log(run.run_dir)
    ended = _events(run.run_dir)[-1]
    assert ended["status"] == "oom" and "during sampling" in ended["reason"] and "batch size 2" in ended["reason"]
    assert "resolution" in ended["reason"]
    assert group_members(run.pid) == []
