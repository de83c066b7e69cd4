"""Issue 13: several processes and several machines, on the CPU over gloo.

Two "machines" are two `loratrainer train --set machine_rank=K` launches on 127.0.0.1; one machine with two
processes is one launch with num_processes=2. LORATRAINER_TRACE_BATCHES makes every process list the images of
each batch it trains, so the split of the data can be read back.
"""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.config import save_config
from loratrainer.data.check import check_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TRACE = {"LORATRAINER_TRACE_BATCHES": "1"}


def _batches(run_dir: Path, rank: int) -> list[dict]:
    path = run_dir / f"batches-rank-{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _assert_split(per_rank: dict[int, list[dict]], config, epochs: int) -> None:
    """Every epoch: no image trained by two ranks, and together exactly the images the single-process plan has."""
    images = sorted(str(p) for p in Path(config.folders.train_data_dir).rglob("*.png"))
    for epoch in range(1, epochs + 1):
        seen = {rank: [i for b in batches if b["epoch"] == epoch for i in b["images"]] for rank, batches in per_rank.items()}
        assert all(seen.values()), f"a rank trained nothing in epoch {epoch}: {seen}"
        ranks = list(seen)
        assert not set(seen[ranks[0]]) & set(seen[ranks[1]]), f"epoch {epoch}: an image on two ranks: {seen}"
        assert sorted(seen[ranks[0]] + seen[ranks[1]]) == images


def _cli(config_path: Path, rank: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loratrainer", "train", "--config", str(config_path), "--set", f"machine_rank={rank}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def test_two_machines_on_localhost_split_the_data_and_only_rank_0_writes(tmp_path, tiny_model):
    config = small_config(tmp_path, tiny_model, images=4, repeats=1, train_batch_size=1, epoch=2, num_machines=2,
                          num_processes=2, main_process_ip="127.0.0.1", main_process_port=29761)
    save_config(config, tmp_path / "config.json")
    env = {**os.environ, **TRACE, "LORATRAINER_PROGRESS_INTERVAL_S": "0"}
    machines = [_cli(tmp_path / "config.json", rank, env) for rank in (0, 1)]
    try:
        outputs = [m.communicate(timeout=400)[0] for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                os.killpg(m.pid, 9)
    assert [m.returncode for m in machines] == [0, 0], "\n----\n".join(o[-3000:] for o in outputs)
    run_dirs = {}
    for run_dir in (tmp_path / "out" / "log").iterdir():
        run_dirs[json.loads((run_dir / run_files.CONFIG_FILE).read_text())["launch"]["machine_rank"]] = run_dir
    assert sorted(run_dirs) == [0, 1]  # one run folder per machine (on real machines: one on each)

    plan = check_dataset(config, num_processes=2).steps  # the dataset check for the global batch of 2 x 1
    assert (plan.steps_per_epoch, plan.total_steps) == (2, 4) and check_dataset(config, num_processes=1).steps.total_steps == 8
    evs = [e for e in events.read_events(run_dirs[0] / run_files.EVENTS_FILE)[0] if e["event"] not in ("phase", "note")]
    started, ended = evs[0], evs[-1]
    assert started["event"] == "started" and started["num_processes"] == 2 and started["total_steps"] == plan.total_steps
    assert ended["status"] == "finished" and ended["step"] == plan.total_steps
    assert [e["step"] for e in evs if e["event"] == "progress"] == list(range(1, plan.total_steps + 1))

    # only rank 0 writes: machine 1's run folder has no events, log, samples or state of its own
    assert not (run_dirs[1] / run_files.EVENTS_FILE).exists() and not (run_dirs[1] / run_files.LOG_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == ["last-000001.safetensors", "last-000002.safetensors", "last.safetensors"]
    console_1 = (run_dirs[1] / "console.log").read_text(errors="replace")
    assert "process rank 1 of 2 on machine 1 of 2" in console_1
    assert "this is machine rank 1 of 2" in outputs[1] and "this machine's processes ended: finished" in outputs[1]
    assert "finished" in outputs[0] and "saved" in outputs[0]
    # each machine recorded its own worker
    assert json.loads((run_dirs[1] / "processes" / "rank-1.json").read_text())["machine_rank"] == 1
    assert json.loads((run_dirs[0] / "processes" / "rank-0.json").read_text())["machine_rank"] == 0

    _assert_split({0: _batches(run_dirs[0], 0), 1: _batches(run_dirs[1], 1)}, config, epochs=2)


def test_one_machine_two_processes_split_the_data_as_the_dataset_check_plans(tmp_path, tiny_model):
    from tests.test_train_support import start_with_env

    config = small_config(tmp_path, tiny_model, images=4, repeats=1, train_batch_size=1, epoch=2, num_processes=2,
                          main_process_port=29763)
    run = start_with_env(config, TRACE)
    assert run.wait(timeout=300) == 0, (run.run_dir / "console.log").read_text()[-3000:]
    plan = check_dataset(config, num_processes=2).steps
    ended = events.read_events(run.events_path)[0][-1]
    assert ended["status"] == "finished" and ended["step"] == plan.total_steps == 4
    per_rank = {rank: _batches(run.run_dir, rank) for rank in (0, 1)}
    assert [len(b) for b in per_rank.values()] == [plan.total_steps, plan.total_steps]  # one batch per step each
    _assert_split(per_rank, config, epochs=2)
    assert Counter(len(b["images"]) for b in per_rank[0]) == {1: 4}


def test_two_processes_at_batch_1_train_the_lora_one_process_trains_at_batch_2(tmp_path, tiny_model):
    # The same global batch (2 images), the same seed: each image's noise, timestep and VAE sample are seeded
    # by the image (train.dataset.noise_seed), and DDP averages the two processes' gradients, so the LoRA is the
    # single-process one within float tolerance. Two images = one global batch per epoch, so both layouts put
    # the same images together (with more, the batches of the two layouts pair images differently).
    import torch
    from safetensors.torch import load_file

    from tests.test_train_support import start_with_env

    common = dict(images=2, repeats=1, epoch=3, save_precision="float", cache_latents=False, learning_rate=1e-3)
    single = small_config(tmp_path / "one", tiny_model, train_batch_size=2, **common)
    double = small_config(tmp_path / "two", tiny_model, train_batch_size=1, num_processes=2, main_process_port=29765, **common)
    runs = [start_with_env(single), start_with_env(double)]
    for run in runs:
        assert run.wait(timeout=400) == 0, (run.run_dir / "console.log").read_text()[-3000:]
    steps = [events.read_events(run.events_path)[0][-1]["step"] for run in runs]
    assert steps == [3, 3] == [check_dataset(single).steps.total_steps, check_dataset(double).steps.total_steps]
    one, two = (load_file(str(tmp_path / d / "out" / "last.safetensors")) for d in ("one", "two"))
    assert one.keys() == two.keys()
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    moved = max(float(one[k].abs().max()) for k in one if "lora_up" in k)
    print("largest difference", worst, "largest lora_up value", moved)
    assert moved > 1e-4  # training moved the weights: the comparison is not of two untouched initialisations
    assert worst < 0.01 * moved, (worst, moved)  # measured: 4e-7 against 3e-4 (other noise per process: ~1e-4)
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)
