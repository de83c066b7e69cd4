"""Choosing the best epoch: `loratrainer compare` renders real Kohya-format LoRA files on a tiny SD1.5 model
(built from configs with the real diffusers classes) at several weights; the prompt x epoch grid of training
samples; a run's files come from its events, never from file names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.config import TrainingConfig, save_config, with_values
from tests.datasets import make_image

ROOT = Path(__file__).resolve().parent.parent


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((2).to_bytes(8, "little") + b"{}")  # the smallest safetensors file: compare reads the header
    return path


def write_run(tmp_path: Path, name: str, model: str, files: list[Path], *, samples: list[tuple[int, int, int, str, Path]] = ()) -> Path:
    """A run folder as the trainer writes it: config.json and events.jsonl naming the files it saved."""
    out = tmp_path / "model"
    config = with_values(TrainingConfig(), {"folders.output_dir": str(out), "folders.output_name": name,
                                            "model.pretrained_model_name_or_path": model})
    run_dir = out / "log" / f"{name}_20260101-000000"
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / run_files.CONFIG_FILE)
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        w.emit("started", total_steps=4 * len(files), steps_per_epoch=4, epochs=len(files), num_processes=1, images=4,
               samples_per_epoch=4, seed=1, pid=999999)
        for epoch, path in enumerate(files, 1):
            for step in range(4 * epoch - 3, 4 * epoch + 1):
                w.emit("progress", step=step, total_steps=4 * len(files), epoch=epoch, epochs=len(files), loss=0.1 * step, avg_loss=0.1,
                       lr=1e-4)
            for s_step, s_epoch, index, prompt, sample in samples:
                if s_epoch == epoch:
                    w.emit("sample", path=str(sample), step=s_step, epoch=s_epoch, index=index, prompt=prompt, seed=5)
            w.emit("checkpoint", path=str(path), kind="epoch" if epoch < len(files) else "final", epoch=epoch, step=4 * epoch,
                   epoch_loss=0.1 * (4 * epoch - 1.5) + (0.5 if epoch == 2 else 0))
        w.emit("ended", status="finished", reason="", step=4 * len(files), epoch=len(files), exit_code=0)
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny diffusers model and two real LoRA files (different weights: two "epochs") saved as the trainer saves them."""
    from loratrainer.compat import hide_broken_torchvision

    hide_broken_torchvision()
    from loratrainer.model.kohya_format import lora_state_dict
    from loratrainer.model.saving import save_lora
    from tests.test_model_saving import metadata, trained_handle
    from tests.tiny_sd import save_tiny_diffusers

    root = tmp_path_factory.mktemp("compare")
    model = save_tiny_diffusers(root / "tiny-sd")
    config = TrainingConfig()
    config.network.network_dim, config.network.network_alpha = 4, 4
    files = [save_lora(root / "model" / f"house-{e:06d}.safetensors", lora_state_dict(trained_handle(config, seed=e), "float"), metadata(config))
             for e in (1, 2)]
    return root, model, files


def cells(grid: Path) -> tuple[dict, list[list[np.ndarray]]]:
    sidecar = json.loads(grid.with_suffix(".json").read_text())
    image = np.asarray(Image.open(grid).convert("RGB"))
    return sidecar, [[image[y:y + h, x:x + w] for x, y, w, h in row] for row in sidecar["cells"]]


def test_cli_compare_weight_zero_is_the_base_model_in_every_row(tiny_run, tmp_path):
    root, model, files = tiny_run
    run_dir = write_run(tmp_path, "house", str(model), files)
    grid = tmp_path / "grid.png"
    argv = [sys.executable, "-m", "loratrainer", "compare", str(run_dir), "--weights", "0,0.5,1", "--prompt", "a small house",
            "--seed", "7", "--steps", "2", "--width", "32", "--height", "32", "-o", str(grid)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and grid.is_file()
    sidecar, image = cells(grid)
    assert sidecar["files"] == [str(f) for f in files]
    assert sidecar["weights"] == [0.0, 0.5, 1.0] and sidecar["prompts"] == ["a small house"] and sidecar["seed"] == 7 and sidecar["steps"] == 2
    assert sidecar["model"] == str(model) and sidecar["sampler"] == "euler_a"
    assert sidecar["rows"] == ["epoch 1", "final (step 8)"]
    assert sidecar["columns"][0] == "weight 0 (base model)"
    (e1_w0, e1_half, e1_w1), (e2_w0, e2_half, e2_w1) = image
    assert np.array_equal(e1_w0, e2_w0)  # the base model with the same seed: one image down the column
    assert e1_w0.std() > 1  # a real image, not an empty cell
    assert np.abs(e1_w1.astype(int) - e2_w1.astype(int)).max() > 10  # the epochs differ at weight 1
    assert np.abs(e1_w1.astype(int) - e1_w0.astype(int)).max() > 10  # and the LoRA changes the base image
    assert not np.array_equal(e1_half, e1_w1)

    # The same file again: refused, not overwritten.
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr


def test_cli_compare_files_need_a_model_or_their_run(tiny_run, tmp_path):
    root, model, files = tiny_run
    grid = tmp_path / "g.png"
    argv = [sys.executable, "-m", "loratrainer", "compare", str(files[0]), "--prompt", "x", "-o", str(grid)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--model" in done.stderr and "Traceback" not in done.stderr
    bad = subprocess.run([sys.executable, "-m", "loratrainer", "compare", str(tmp_path), "-o", str(grid)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr


def test_a_run_lists_exactly_the_files_it_wrote(tmp_path):
    """Run "house" and run "house-long" share a prefix and an output folder; a failed run saved nothing."""
    from loratrainer.compare.runs import read_run

    out = tmp_path / "model"
    short = [touch(out / f"house-{e:06d}.safetensors") for e in (1, 2)]
    long = [touch(out / f"house-long-{e:06d}.safetensors") for e in (1, 2, 3)]
    a = write_run(tmp_path, "house", "m", short)
    b = write_run(tmp_path, "house-long", "m", long)
    failed = out / "log" / "house_20260101-000001"
    failed.mkdir()
    (failed / run_files.EVENTS_FILE).write_text(json.dumps({"event": "ended", "status": "error", "reason": "boom"}) + "\n")
    assert [f.path for f in read_run(a).files] == short
    assert [f.path for f in read_run(b).files] == long
    assert read_run(failed).files == []
    first = read_run(a).files[0]
    assert (first.epoch, first.step, first.kind) == (1, 4, "epoch")
    assert first.epoch_loss == pytest.approx(0.25)  # the mean of steps 1-4
    assert read_run(a).files[1].epoch_loss == pytest.approx(1.15)  # the trainer's exact value wins over the events' mean


def test_sample_grid_rows_are_prompts_and_columns_are_epochs(tmp_path):
    from loratrainer.compare.runs import read_run
    from loratrainer.compare.sample_grid import sample_grid

    out = tmp_path / "model"
    colors = {}
    samples = []
    for epoch in (1, 2):
        for index, prompt in enumerate(["a house", "a tree"]):
            color = (60 * epoch, 100 + 80 * index, 30)
            colors[(epoch, index)] = color
            path = make_image(out / "sample" / f"house_e{epoch:06d}_{index:02d}.png", (48, 64), color=color)
            samples.append((4 * epoch, epoch, index, prompt, path))
    run_dir = write_run(tmp_path, "house", "m", [touch(out / f"house-{e:06d}.safetensors") for e in (1, 2)], samples=samples)
    grid = sample_grid(read_run(run_dir))
    assert grid == run_dir / "sample-grid.png"
    sidecar, image = cells(grid)
    assert sidecar["rows"] == ["1. a house", "2. a tree"]
    assert sidecar["columns"] == ["epoch 1 (step 4)", "epoch 2 (step 8)"]
    for r, index in enumerate((0, 1)):
        for c, epoch in enumerate((1, 2)):
            assert tuple(image[r][c][24, 20]) == pytest.approx(colors[(epoch, index)], abs=3)
    assert sample_grid(read_run(write_run(tmp_path / "other", "x", "m", []))) is None


def test_a_grid_render_runs_apart_and_cancels(tiny_run, tmp_path):
    """The GUI's render: its own process (and session) writing progress; Cancel ends it and saves nothing."""
    import time

    from loratrainer.compare.process import Renders

    root, model, files = tiny_run
    renders = Renders()
    target = tmp_path / "grids" / "w.png"
    render = renders.start([str(f) for f in files] + ["--model", str(model), "--prompt", "x", "--steps", "50", "--width", "64", "--height", "64"],
                           target)
    deadline = time.time() + 120
    while not render.last() and time.time() < deadline:
        time.sleep(0.2)
    assert render.last().get("phase") in ("loading", "rendering")
    assert render.running
    try:
        renders.start(["x"], tmp_path / "other.png")
        raise AssertionError("a second render started while one runs")
    except RuntimeError:
        pass
    assert renders.cancel() is True
    assert not render.running and render.cancelled and not target.exists()
    assert renders.cancel() is False


def test_files_are_labelled_by_the_run_that_wrote_them(tmp_path):
    from loratrainer.compare.inputs import resolve

    out = tmp_path / "model"
    files = [touch(out / f"house-{e:06d}.safetensors") for e in (1, 2)]
    run_dir = write_run(tmp_path, "house", "/models/base", files)  # the run folder under <output>/log: found by itself
    found = resolve([str(f) for f in files])
    assert found.labels == ["epoch 1", "final (step 8)"] and found.config.model.pretrained_model_name_or_path == "/models/base"
    elsewhere = tmp_path / "logs" / run_dir.name  # a logging folder of its own: --run names the run
    elsewhere.parent.mkdir()
    run_dir.rename(elsewhere)
    assert resolve([str(f) for f in files]).labels == ["house-000001", "house-000002"]
    assert resolve([str(f) for f in files], elsewhere).labels == ["epoch 1", "final (step 8)"]
