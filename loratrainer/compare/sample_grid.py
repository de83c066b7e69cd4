"""The prompt x epoch grid: the sample images a run rendered while training, one row per sample prompt and one
column per time it sampled, labelled, as one PNG in the run folder with a JSON sidecar. Pillow only."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from loratrainer.compare.canvas import labelled_grid
from loratrainer.compare.runs import RunRecord
from loratrainer.files import atomic_write, atomic_write_with

GRID_FILE = "sample-grid.png"


def column_label(step: int, epoch: int, steps_per_epoch: int) -> str:
    if step == 0:
        return "before training"
    if steps_per_epoch and step % steps_per_epoch == 0:
        return f"epoch {epoch} (step {step})"
    return f"step {step} (epoch {epoch})"


def sample_grid(record: RunRecord, target: Path | None = None) -> Path | None:
    """Write the grid (default `<run_dir>/sample-grid.png`, plus `.json`); None when the run has no samples on disk."""
    samples = [s for s in record.samples if s.path.is_file()]
    if not samples:
        return None
    steps = sorted({s.step for s in samples})
    prompts = sorted({(s.index, s.prompt) for s in samples})
    by_cell = {(s.index, s.prompt, s.step): s for s in samples}
    epoch_of = {s.step: s.epoch for s in samples}
    cells: list[list[Image.Image | None]] = []
    files: list[list[str | None]] = []
    for index, prompt in prompts:
        row, names = [], []
        for step in steps:
            s = by_cell.get((index, prompt, step))
            row.append(_open(s.path) if s else None)
            names.append(str(s.path) if s else None)
        cells.append(row)
        files.append(names)
    cols = [column_label(step, epoch_of[step], record.steps_per_epoch) for step in steps]
    rows = [f"{index + 1}. {prompt}" for index, prompt in prompts]
    image, boxes = labelled_grid(cells, rows, cols, title=f"Samples during training: {record.run_dir.name}")
    target = Path(target) if target else record.run_dir / GRID_FILE
    atomic_write_with(target, lambda tmp: image.save(tmp, "PNG"))
    sidecar = {"run": str(record.run_dir), "rows": rows, "columns": cols, "steps": steps, "files": files, "cells": boxes}
    atomic_write(target.with_suffix(".json"), json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n")
    return target


def _open(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError:
        return None
