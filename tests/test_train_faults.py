"""Fault injection is a test-mode-only switch, and a real divergence (not an injected NaN) ends a run as `nan`.

LORATRAINER_FAULT is honoured only when LORATRAINER_TEST_MODE=1 is set as well (tests/conftest.py sets it for
the suite), so a stray LORATRAINER_FAULT in a user's shell cannot fail a real run. The divergence test trains the
tiny model with a learning rate far too high and no gradient clipping: once until the model's output overflows (the
loss guard stops it), once on fp16 weights until an update itself overflows and the weights are NaN or infinite (the
weight check after every update stops it). Both end `nan`, name the last good file and write nothing non-finite.
"""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import logging
import math
import os
import re
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from loratrainer.train import faults
from tests.datasets import make_dataset

ALL_FAULTS = "nan@1,oom@1,disk_full@save1,kill@save1,stop@2,oom@sample"


def _run(config, tmp_path: Path, spy: list | None = None, monkeypatch=None, run=None):
    """entry.run_and_classify in this process (what the trainer process does); returns (status, reason, step, epoch)."""
    from loratrainer.train import entry, setup
    from loratrainer.train.run_context import RunContext

    if spy is not None:
        build = setup.build_trainer

        def recording(*args, **kwargs):
            spy.append(build(*args, **kwargs))
            return spy[-1]

        monkeypatch.setattr(setup, "build_trainer", recording)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    threads = torch.get_num_threads()
    try:
        return entry.run_and_classify(config, run or RunContext(run_dir), Accelerator(cpu=True))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", [None, "", "0", "true", "yes"])
def test_a_fault_outside_test_mode_injects_nothing(monkeypatch, caplog, tmp_path, mode):
    monkeypatch.setenv("LORATRAINER_FAULT", ALL_FAULTS)
    if mode is None:
        monkeypatch.delenv("LORATRAINER_TEST_MODE", raising=False)
    else:
        monkeypatch.setenv("LORATRAINER_TEST_MODE", mode)
    monkeypatch.setattr(faults, "_warned", [])
    with caplog.at_level(logging.WARNING, logger="loratrainer.train"):
        assert [faults._fault(k) for k in ("nan", "oom", "disk_full", "kill", "stop")] == [None] * 5
    assert "LORATRAINER_FAULT is ignored" in caplog.text  # said once, so a developer sees why nothing happens
    loss = torch.tensor(0.5)
    assert torch.equal(faults.inject_fault("nan", 1, loss), loss)
    faults.fail_step(1)
    faults.fail_sampling()
    assert not faults.stop_after(1)
    real_fsync = os.fsync
    with faults.during_save(1, tmp_path / "x.safetensors"):
        assert os.fsync is real_fsync


def test_in_test_mode_the_faults_fire(monkeypatch, tmp_path):
    monkeypatch.setenv("LORATRAINER_FAULT", "nan@1,oom@1,disk_full@save1,stop@2")  # (kill@ would end pytest)
    monkeypatch.setenv("LORATRAINER_TEST_MODE", "1")
    assert torch.isnan(faults.inject_fault("nan", 1, torch.tensor(0.5)))
    with pytest.raises(torch.OutOfMemoryError):
        faults.fail_step(1)
    assert faults.stop_after(1)
    with pytest.raises(OSError, match="No space left"):
        with faults.during_save(1, tmp_path / "x.safetensors"):
            os.fsync(0)
    monkeypatch.setenv("LORATRAINER_FAULT", "oom@sample")  # one value per kind: the first oom@ wins
    with pytest.raises(torch.OutOfMemoryError):
        faults.fail_sampling()


def _seam_targets(monkeypatch) -> dict:
    """The product functions the seam wraps, replaced by fresh unwrapped recorders for this test."""
    from loratrainer.train import loop, sampling, saving

    calls: list = []

    def saved(path, *args, **kwargs):
        calls.append(("save", path))
        with open(path, "wb") as fh:
            fh.write(b"x")
            os.fsync(fh.fileno())  # where a real save's atomic write syncs its temporary file

    targets = {(loop, "training_step"): lambda t, group: calls.append(("step", t.step)) or (0.5, False),
               (loop, "agree_across_processes"): lambda t, loss: (float(loss), False),
               (sampling, "render"): lambda *a: calls.append(("render",)),
               (saving, "save_lora"): saved}
    for (module, name), fn in targets.items():
        monkeypatch.setattr(module, name, fn)
    return {"calls": calls, "targets": targets}


def _fake_trainer(tmp_path: Path):
    from types import SimpleNamespace

    return SimpleNamespace(step=0, run_dir=tmp_path, loader=[], sampler=None,
                           accelerator=SimpleNamespace(process_index=0, is_main_process=True))


def test_the_trainer_enters_the_fault_seam_at_one_point():
    import loratrainer

    root = Path(loratrainer.__file__).parent
    importers = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.name != "faults.py"
                       and re.search(r"^\s*(from|import) .*\bfaults\b", p.read_text(encoding="utf-8"), re.MULTILINE))
    assert importers == ["train/entry.py"]  # the loop, sampling and saving carry no test code


@pytest.mark.parametrize("mode, fault", [(None, ALL_FAULTS), ("0", ALL_FAULTS), ("1", None)])
def test_outside_test_mode_or_without_a_fault_the_seam_changes_nothing(monkeypatch, tmp_path, mode, fault):
    seam = _seam_targets(monkeypatch)
    monkeypatch.setattr(faults, "_warned", [])
    for name, value in (("LORATRAINER_TEST_MODE", mode), ("LORATRAINER_FAULT", fault), ("LORATRAINER_TRACE_BATCHES", "1" if mode != "1" else None)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    reporter, t = object(), _fake_trainer(tmp_path)
    assert faults.install(t, reporter) is reporter and t.loader == []
    assert all(getattr(module, name) is fn for (module, name), fn in seam["targets"].items())
    assert not (tmp_path / "STOP").exists()


def test_in_test_mode_the_seam_wraps_the_step_the_loss_sampling_and_saving(monkeypatch, tmp_path):
    from loratrainer.train import loop, sampling, saving

    seam = _seam_targets(monkeypatch)
    monkeypatch.setenv("LORATRAINER_TEST_MODE", "1")
    monkeypatch.setenv("LORATRAINER_FAULT", "oom@2,nan@3,disk_full@save2,stop@1")
    steps: list = []
    reporter = type("R", (), {"step": lambda self, *a: steps.append(a), "epoch_end": lambda self, *a: None})()
    t = _fake_trainer(tmp_path)
    wrapped = faults.install(t, reporter)
    assert (tmp_path / "STOP").exists()  # stop@1: asked before the first step, so step 1 is the last
    assert loop.training_step(t, []) == (0.5, False)  # step 1 runs
    t.step = 1
    with pytest.raises(torch.OutOfMemoryError):
        loop.training_step(t, [])  # oom@2: before step 2 trains
    assert seam["calls"] == [("step", 0)]
    t.step = 3
    assert math.isnan(loop.agree_across_processes(t, torch.tensor(0.5))[0])  # nan@3: step 3's loss
    t.step = 4
    assert loop.agree_across_processes(t, torch.tensor(0.5))[0] == 0.5
    sampling.render(t)
    saving.save_lora(tmp_path / "a.safetensors")
    with pytest.raises(OSError, match="No space left"):
        saving.save_lora(tmp_path / "b.safetensors")  # disk_full@save2: the second save
    wrapped.step(1, 1, 0.5, 1e-4)
    assert steps == [(1, 1, 0.5, 1e-4)]  # the real reporter still hears every step
    assert faults.install(t, reporter) is not reporter and getattr(loop.training_step, "_fault_seam")  # wrapped once
    assert loop.training_step(t, []) == (0.5, False)


def test_a_users_shell_cannot_fail_a_real_run(monkeypatch, tmp_path, tiny_model):
    monkeypatch.setenv("LORATRAINER_FAULT", "nan@1,oom@2,disk_full@save1")
    monkeypatch.delenv("LORATRAINER_TEST_MODE", raising=False)
    config = small_config(tmp_path, tiny_model, epoch=1)
    status, reason, step, _ = _run(config, tmp_path)
    assert (status, reason, step) == ("finished", "", 3)
    assert (tmp_path / "out" / "last.safetensors").exists()


def test_a_real_divergence_ends_nan_with_the_weights_blown_up_and_no_bad_file(monkeypatch, tmp_path, tiny_model):
    # No injected fault: SGD at the highest allowed learning rate, clipping off, and alpha/rank = 1024 (each update
    # scaled a thousandfold) blow the LoRA weights up within a few steps until the model's output overflows.
    monkeypatch.delenv("LORATRAINER_FAULT", raising=False)
    config = small_config(tmp_path, tiny_model, epoch=20, optimizer="SGD", learning_rate=10.0, unet_lr=10.0,
                          text_encoder_lr=10.0, max_grad_norm=0, network_dim=1, network_alpha=1024,
                          save_every_n_steps=1, save_every_n_epochs=0, save_precision="float")
    spy: list = []
    status, reason, step, _ = _run(config, tmp_path, spy, monkeypatch)
    (t,) = spy
    assert status == "nan", (status, reason)
    assert 1 < step < t.total_steps and "lower the learning rate" in reason
    # the weights themselves diverged (the guard stops the run before the optimizer applies the NaN gradient)
    weights = t.handle.unet_parameters() + t.handle.text_encoder_parameters()
    assert max(float(p.detach().abs().max()) for p in weights) > 50  # kaiming init of rank 1 starts below 0.5
    written = sorted((tmp_path / "out").glob("*.safetensors"))
    assert len(written) == step - 1  # one file per step that finished, none for the diverged one
    for path in written:
        assert all(torch.isfinite(v).all() for v in load_file(str(path)).values()), path
    assert str(written[-1]) in reason  # the last good file is named


def _divergence_config(tmp_path: Path, tiny_model: Path, learning_rate: float):
    # No injected fault. Every setting that scales the update is turned up, as an over-eager user does: SGD with
    # Nesterov momentum, no clipping, alpha/rank 100000, regularisation images at prior loss weight 10, and the
    # LoRA weights themselves in fp16 (full_fp16), whose largest value is 65504. Step 1 is the warm-up step (rate
    # 0: its file is good); step 2 runs at the full rate. The loss of step 2 is finite; its update is not.
    reg = make_dataset(tmp_path / "reg", {"1_thing": 6})
    return small_config(tmp_path, tiny_model, epoch=2, optimizer="SGDNesterov", learning_rate=learning_rate,
                        unet_lr=learning_rate, text_encoder_lr=learning_rate, max_grad_norm=0, network_dim=1,
                        network_alpha=100000, reg_data_dir=str(reg), prior_loss_weight=10.0, train_batch_size=4,
                        mixed_precision="fp16", full_fp16=True, lr_scheduler="constant_with_warmup",
                        lr_warmup_steps=1, save_every_n_steps=1, save_every_n_epochs=0, save_precision="float")


def test_a_learning_rate_too_high_makes_the_weights_non_finite_and_the_run_stops_at_that_update(monkeypatch, tmp_path, tiny_model):
    monkeypatch.delenv("LORATRAINER_FAULT", raising=False)
    losses: list[float] = []
    from loratrainer.train import loop

    agree = loop.agree_across_processes

    def recording(t, loss):
        losses.append(agree(t, loss)[0])
        return losses[-1], False

    monkeypatch.setattr(loop, "agree_across_processes", recording)
    spy: list = []
    from loratrainer.run import events
    from loratrainer.run import files as run_files
    from loratrainer.train import entry
    from loratrainer.train.run_context import RunContext

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = RunContext(run_dir, events=events.EventWriter(run_dir / run_files.EVENTS_FILE))
    status, reason, step, epoch = _run(_divergence_config(tmp_path, tiny_model, 10.0), tmp_path, spy, monkeypatch, run)
    entry.emit_ended(run, status, reason, step, epoch)  # what the trainer process writes last
    run.events.close()
    (t,) = spy
    assert (status, step, epoch) == ("nan", 2, 1), (status, reason)
    # a real divergence: every loss was finite, and the weights after the update are not
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    weights = t.handle.unet_parameters() + t.handle.text_encoder_parameters()
    assert weights[0].dtype == torch.float16
    assert not all(torch.isfinite(p).all() for p in weights)
    # what the user reads: the step, the cause, what to change, and the file to use
    good = tmp_path / "out" / "last-step00000001.safetensors"
    assert reason.startswith("The LoRA weights became non-finite (NaN or infinite) in the update of step 2 (epoch 1, learning rate 10)")
    assert "lower the learning rate" in reason and "full fp16" in reason
    assert reason.endswith(f"The last good file is {good}.")
    # nothing non-finite was written: the step-1 file is the only file, and it is finite
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".safetensors") == [good.name]
    assert all(torch.isfinite(v).all() for v in load_file(str(good)).values())
    # the GUI's status says what happened (the weights, not the loss), in either language, naming the file
    from loratrainer.gui.i18n import Translator
    from loratrainer.gui.jobs import Jobs
    from loratrainer.gui.run_view import status_line
    from tests.test_gui_i18n_messages import HANGUL, english_phrases

    view = Jobs(tmp_path / "state").view(run_dir)
    en, ko = status_line(view, Translator("en")), status_line(view, Translator("ko"))
    assert "weights became non-finite" in en and "loss became NaN" not in en and good.name in en and "full fp16" in en, en
    assert "가중치" in ko and good.name in ko and HANGUL.search(ko) and english_phrases(ko) == [], ko

