"""Shared helpers of the trainer tests (no tests here): a tiny model folder, a small dataset, a run config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loratrainer.config import TrainingConfig, with_values
from loratrainer.compat import hide_broken_torchvision

hide_broken_torchvision()

from tests.datasets import make_dataset  # noqa: E402
from tests.tiny_sd import save_tiny_diffusers  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_diffusers(tmp_path_factory.mktemp("tiny") / "tiny-sd")


def small_config(root: Path, model: Path, images: int = 3, repeats: int = 2, **values) -> TrainingConfig:
    """A 64x64 dataset of `images` images x `repeats`, batch 2, 2 epochs, fp32, AdamW, tiny model."""
    data = make_dataset(root / "image", {f"{repeats}_thing": images})
    base = {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(root / "out"),
        "max_resolution": "64,64", "min_bucket_reso": 64, "train_batch_size": 2, "epoch": 2, "optimizer": "AdamW",
        "mixed_precision": "no", "num_cpu_threads_per_process": 1, "seed": 42, "lr_scheduler": "constant",
    }
    return with_values(TrainingConfig(), {**base, **values})


def start_with_env(config, env: dict | None = None):
    """start_run with extra environment variables (e.g. LORATRAINER_FAULT) for the trainer it starts."""
    from loratrainer.launch.start import start_run

    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return start_run(config)
    finally:
        os.environ.clear()
        os.environ.update(old)


def run_in_process(config, run_dir: Path) -> int:
    """What the trainer process does with a run folder (train, classify the outcome, write events.jsonl and its
    `ended` line), in this process on the CPU; returns the exit code the process would exit with. For tests of what
    is trained (resume, faults' outcomes): starting `accelerate launch` costs a fresh interpreter, torch and the
    model per run, and the tests of the launch itself (tests/test_train_e2e.py, the stop and kill tests) keep it."""
    import torch
    from accelerate import Accelerator

    from loratrainer.run import events
    from loratrainer.run import files as run_files
    from loratrainer.train import entry
    from loratrainer.train.run_context import RunContext

    run_dir.mkdir(parents=True)
    writer = events.EventWriter(run_dir / run_files.EVENTS_FILE)
    run = RunContext(run_dir, events=writer)
    threads = torch.get_num_threads()
    try:
        status, reason, step, epoch = entry.run_and_classify(config, run, Accelerator(cpu=True))
        return entry.emit_ended(run, status, reason, step, epoch)
    finally:
        writer.close()
        torch.set_num_threads(threads)
