"""Real runs through `accelerate launch` on the tiny model: files, events, logs, single file, 2 processes, stop, NaN.

The ends that need no second process (a STOP, a NaN loss, a full disk, out of memory on one process) train in this
process through the trainer's own `entry.run_and_classify` (tests/test_train_support.py `run_in_process`): the
trainer's outcome, events, files and exit code are the same; the launch, the exit code through `accelerate launch`
and two processes are tested by the runs that start one (and tests/test_gui_faults.py shows these faults from a
real trainer process)."""

from __future__ import annotations

from tests.test_train_support import run_in_process, small_config, start_with_env, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.config import save_config, with_values
from loratrainer.data.check import check_dataset
from loratrainer.launch.start import start_run
from tests.tiny_sd import save_tiny_single_file, tiny_config_dir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _events(run_dir: Path) -> list[dict]:
    """The run's events without its `phase` events (loading, caching, saving: tests/test_run_lifecycle.py)."""
    return [e for e in events.read_events(run_dir / run_files.EVENTS_FILE)[0] if e["event"] != "phase"]


def _run_dir(out: Path) -> Path:
    (run_dir,) = (out / "log").iterdir()
    return run_dir


def test_cli_train_two_epochs_writes_files_events_logs_and_config(tmp_path, tiny_model):
    config = small_config(tmp_path, tiny_model, metadata_title="tiny test")
    save_config(config, tmp_path / "config.json")
    proc = subprocess.run([sys.executable, "-m", "loratrainer", "train", "--config", str(tmp_path / "config.json"), "--set", "network_dim=4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["last-000001.safetensors", "last-000002.safetensors", "last.safetensors"]
    run_dir = _run_dir(out)
    evs = _events(run_dir)
    kinds = [e["event"] for e in evs]
    # the run's notes (what the page says about the config, e.g. fp16 off on a CPU) may come first; then `started`
    evs = [e for e in evs if e["event"] != "note"]
    assert [k for k in kinds if k != "note"][0] == "started" and kinds[-1] == "ended" and "progress" in kinds
    planned = check_dataset(config).steps.total_steps
    assert evs[0]["total_steps"] == planned == 6 and evs[0]["seed"] == 42
    assert evs[-1] == {**evs[-1], "status": "finished", "step": planned, "epoch": 2, "exit_code": 0}
    assert [(e["kind"], e["step"]) for e in evs if e["event"] == "checkpoint"] == [("epoch", 3), ("epoch", 6), ("final", 6)]
    state = events.summarize(evs)
    assert state.status == "finished" and state.last_files[-1].endswith("last.safetensors") and state.loss_history
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["network"]["network_dim"] == 4  # the --set value is in the resolved config
    assert json.loads((run_dir / "command.json").read_text())["argv"][1:3] == ["-m", "accelerate.commands.launch"]
    assert json.loads((run_dir / "versions.json").read_text())["seed"] == 42
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "ended: finished" in (run_dir / "train.log").read_text()
    with safe_open(str(out / "last.safetensors"), "pt") as f:
        meta = f.metadata()
        assert any(k.startswith("lora_te_") for k in f.keys()) and any(k.startswith("lora_unet_") for k in f.keys())
    assert meta["ss_steps"] == "6" and meta["ss_seed"] == "42" and meta["ss_network_dim"] == "4"
    assert "finished" in proc.stderr


def test_single_file_checkpoint_offline(tmp_path, tiny_model, monkeypatch):
    """A tiny single file through the trainer's own `entry.train_run`, in this process so that the tiny configs can stand
    in for the shipped SD1.5 ones (the product has no switch for that; a full-size file loads with the shipped
    configs in tests/test_model_loading_full_size.py)."""
    from accelerate import Accelerator

    from loratrainer.model import loading
    from loratrainer.train.entry import train_run
    from loratrainer.train.run_context import RunContext

    ckpt = save_tiny_single_file(tmp_path / "tiny.safetensors")
    monkeypatch.setattr(loading, "SD15_CONFIG_DIR", tiny_config_dir(tmp_path / "tiny-configs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = small_config(tmp_path, ckpt, epoch=1, text_encoder_lr=0, max_data_loader_n_workers=1, persistent_data_loader_workers=True)
    (tmp_path / "run").mkdir()
    threads = torch.get_num_threads()
    try:
        outcome = train_run(config, RunContext(tmp_path / "run"), Accelerator(cpu=True))
    finally:
        torch.set_num_threads(threads)
    assert outcome.status == "finished" and outcome.step == 3
    with safe_open(str(tmp_path / "out" / "last.safetensors"), "pt") as f:
        assert not any(k.startswith("lora_te_") for k in f.keys())  # a UNet-only LoRA
        assert any(k.startswith("lora_unet_") for k in f.keys())
        assert f.metadata()["ss_sd_model_name"] == "tiny.safetensors"


def test_two_processes_split_the_data_and_only_the_main_process_writes(tmp_path, tiny_model):
    config = small_config(tmp_path, tiny_model, images=4, repeats=2, num_processes=2, main_process_port=29731)
    code = start_with_env(config).wait(timeout=300)
    assert code == 0, _log(config)
    planned = check_dataset(config, num_processes=2).steps
    assert planned.total_steps == 4 and check_dataset(config, num_processes=1).steps.total_steps == 8  # halved
    evs = _events(_run_dir(tmp_path / "out"))
    started = [e for e in evs if e["event"] == "started"]
    assert len(started) == 1 and started[0]["num_processes"] == 2
    assert evs[-1]["status"] == "finished" and evs[-1]["step"] == planned.total_steps
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["last-000001.safetensors", "last-000002.safetensors", "last.safetensors", "log"]


def _in_process(config, monkeypatch, fault: str) -> tuple[int, Path]:
    """The run in this process with LORATRAINER_FAULT set: (exit code, run folder)."""
    monkeypatch.setenv("LORATRAINER_FAULT", fault)
    run_dir = Path(config.folders.output_dir) / "log" / "run"
    return run_in_process(config, run_dir), run_dir


def test_stop_file_saves_interrupted_and_ends_stopped(tmp_path, tiny_model, monkeypatch):
    config = small_config(tmp_path, tiny_model, epoch=200)
    # STOP written once training has started (stop@1), so the first step's check sees it; a STOP written before
    # the first step ends the run with nothing to save (tests/test_run_lifecycle.py)
    code, run_dir = _in_process(config, monkeypatch, "stop@1")
    assert code == events.EXIT_CODES["stopped"], _log(config)
    assert [p.name for p in (tmp_path / "out").glob("*.safetensors")] == ["last-interrupted.safetensors"]
    ended = _events(run_dir)[-1]
    assert ended["status"] == "stopped" and ended["step"] == 1
    # the Queue table's Reason, from the run's events (run/outcomes.queue_reason, said in the page's language)
    from loratrainer.gui.i18n import Translator
    from loratrainer.launch import run_messages

    said = run_messages.queue_reason(events.read_run_state(run_dir))
    assert Translator("en").message(said) == "Stopped at step 1; saved last-interrupted.safetensors."
    assert Translator("ko").message(said).startswith("1 스텝에서 중지했습니다.")


def test_nan_loss_stops_with_status_nan_and_writes_no_file(tmp_path, tiny_model, monkeypatch):
    config = small_config(tmp_path, tiny_model, epoch=3)
    code, run_dir = _in_process(config, monkeypatch, "nan@5")
    assert code == events.EXIT_CODES["nan"]
    ended = _events(run_dir)[-1]
    assert ended["status"] == "nan" and ended["step"] == 5 and ended["epoch"] == 2
    assert "step 5" in ended["reason"] and "epoch 2" in ended["reason"] and "learning rate" in ended["reason"]
    assert "last-000001.safetensors" in ended["reason"]  # the last good file is named
    from loratrainer.gui.i18n import Translator
    from loratrainer.run.outcomes import from_event

    said = from_event(ended["msg"])  # the page's sentence, coded: said in Korean on a Korean page
    assert said.code == "run.nan_at" and Translator("ko").message(said).startswith("5 스텝(에포크 2)에서 일어났습니다.")
    assert "last-000001.safetensors" in Translator("ko").message(said)
    assert [p.name for p in (tmp_path / "out").glob("*.safetensors")] == ["last-000001.safetensors"]
    with safe_open(str(tmp_path / "out" / "last-000001.safetensors"), "pt") as f:  # the last good file: intact, finite
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())


def _log(config) -> str:
    logs = list(Path(config.folders.output_dir, "log").glob("*/*.log"))
    return "\n".join(p.read_text()[-3000:] for p in logs)




def test_resume_from_a_saved_state_matches_the_uninterrupted_run(tmp_path, tiny_model):
    from safetensors.torch import load_file

    config = small_config(tmp_path, tiny_model, save_state=True, lr_scheduler="cosine", save_precision="float")
    assert start_with_env(config).wait(timeout=300) == 0, _log(config)
    out = tmp_path / "out"
    state = out / "last-000001-state"
    assert (state / "train_state.json").exists() and (out / "last-state" / "train_state.json").exists()
    resumed = with_values(config, {"resume": str(state), "output_dir": str(tmp_path / "out2"), "seed": 0})
    run = start_with_env(resumed)
    assert run.wait(timeout=300) == 0, _log(resumed)
    evs = _events(run.run_dir)
    progress = [e for e in evs if e["event"] == "progress"]
    assert progress[0]["step"] == 4 and evs[-1]["step"] == 6 and evs[-1]["epoch"] == 2  # steps continue
    straight, again = load_file(str(out / "last.safetensors")), load_file(str(tmp_path / "out2" / "last.safetensors"))
    assert straight.keys() == again.keys()
    assert all(torch.allclose(straight[k], again[k], atol=1e-6) for k in straight)


def test_resume_from_a_missing_state_is_refused(tmp_path, tiny_model):
    from loratrainer.launch.start import LaunchRefused

    config = small_config(tmp_path, tiny_model, resume=str(tmp_path / "nope"))
    with pytest.raises(LaunchRefused, match="not a saved training state"):
        start_run(config)


def test_disk_full_while_saving_keeps_the_earlier_file_and_ends_disk_full(tmp_path, tiny_model, monkeypatch):
    from safetensors.torch import load_file

    config = small_config(tmp_path, tiny_model, epoch=3)
    code, run_dir = _in_process(config, monkeypatch, "disk_full@save2")
    assert code == events.EXIT_CODES["disk_full"]
    ended = _events(run_dir)[-1]
    assert ended["status"] == "disk_full" and ended["reason"] == f"disk full: {tmp_path / 'out' / 'last-000002.safetensors'}"
    assert ended["msg"] == {"code": "run.disk_full_at", "params": {"path": str(tmp_path / "out" / "last-000002.safetensors")}}
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["last-000001.safetensors"]  # no partial file
    assert load_file(str(out / "last-000001.safetensors"))


def test_out_of_memory_ends_oom_with_advice(tmp_path, tiny_model, monkeypatch):
    config = small_config(tmp_path, tiny_model)
    code, run_dir = _in_process(config, monkeypatch, "oom@2")
    assert code == events.EXIT_CODES["oom"]
    ended = _events(run_dir)[-1]
    assert ended["status"] == "oom" and "batch size 2" in ended["reason"] and "gradient_checkpointing" in ended["reason"]
    assert "during training" in ended["reason"] and "resolution 64" in ended["reason"] and "\n" not in ended["reason"]
    from loratrainer.gui.i18n import Translator
    from loratrainer.run.outcomes import from_event

    ko = Translator("ko").message(from_event(ended["msg"]))
    assert ko == "학습 스텝 중 일어났습니다(1 스텝 후, 배치 크기 2, 해상도 64,64).", ko  # step 2 ran out: 1 step was done


def test_two_processes_stop_together(tmp_path, tiny_model):
    # the STOP check is agreed between processes in the step's one collective: neither may hang waiting
    config = small_config(tmp_path, tiny_model, images=4, num_processes=2, main_process_port=29733, epoch=100,
                          gradient_accumulation_steps=2)
    run = start_with_env(config, {"LORATRAINER_FAULT": "stop@1"})  # STOP from the main process once training started
    assert run.wait(timeout=300) == events.EXIT_CODES["stopped"], _log(config)
    assert [p.name for p in (tmp_path / "out").glob("*.safetensors")] == ["last-interrupted.safetensors"]
    assert _events(run.run_dir)[-1]["step"] == 1
