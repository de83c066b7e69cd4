"""What one run wrote, from its own event stream (read by run/events.RunReader, as the page reads it): the LoRA files
(checkpoint events), the average loss over the epoch each was saved in, the sample images. Nothing is matched by file
name, so a run named `house` never lists the files of `house-long`, and a run that saved nothing lists nothing.
Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from loratrainer.run import events


@dataclass
class SavedFile:
    path: Path
    kind: str  # "epoch" | "step" | "final" | "interrupted"
    epoch: int
    step: int
    time: str  # the checkpoint event's ISO time
    epoch_loss: float | None  # the mean loss over the epoch the file was saved in, up to its step
    validation_loss: float | None = None  # the validation loss of these weights (a `validation` event at its step)
    lowest_validation: bool = False  # the file with the run's lowest validation loss

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    @property
    def size(self) -> int | None:
        try:
            return self.path.stat().st_size
        except OSError:
            return None

    @property
    def local_time(self) -> str:
        try:
            return datetime.fromisoformat(self.time).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return self.time


@dataclass
class Sample:
    path: Path
    step: int
    epoch: int
    index: int  # the prompt's line number among the sample prompts
    prompt: str
    seed: int | None


@dataclass
class RunRecord:
    run_dir: Path
    files: list[SavedFile] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    steps_per_epoch: int = 0
    started: dict[str, Any] = field(default_factory=dict)
    ended: dict[str, Any] | None = None
    validations: list[tuple[int, int, float]] = field(default_factory=list)  # (step, epoch, loss), events.RunState's


def read_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    state = events.read_run_state(run_dir)
    record = RunRecord(run_dir, steps_per_epoch=state.steps_per_epoch, started=state.started, ended=state.ended,
                       validations=list(state.validation_history))
    for e in state.checkpoints:
        step, epoch = int(e.get("step", 0)), int(e.get("epoch", 0))
        loss = e.get("epoch_loss")
        record.files.append(SavedFile(Path(str(e.get("path", ""))), str(e.get("kind", "")), epoch, step, str(e.get("time", "")),
                                      float(loss) if loss is not None else epoch_loss(state.loss_history, epoch, step, state.steps_per_epoch)))
    for e in state.samples:
        record.samples.append(Sample(Path(str(e.get("path", ""))), int(e.get("step", 0)), int(e.get("epoch", 0)), int(e.get("index", 0)),
                                     str(e.get("prompt", "")), e.get("seed")))
    mark_validation(record)
    return record


def mark_validation(record: RunRecord) -> None:
    """Each file's validation loss (the trainer validates before it saves at the same step, so the weights are
    the file's), and the file with the lowest one marked."""
    by_step = {step: loss for step, _, loss in record.validations}
    for f in record.files:
        f.validation_loss = by_step.get(f.step)
    scored = [f for f in record.files if f.validation_loss is not None]
    if scored:
        min(scored, key=lambda f: (f.validation_loss, f.step)).lowest_validation = True


def epoch_loss(history: list[tuple[int, float]], epoch: int, step: int, steps_per_epoch: int) -> float | None:
    """For checkpoint events without the trainer's exact `epoch_loss` (runs of older versions): the mean of the
    step losses the (throttled) progress events reported in that epoch (its steps, by the started event's
    steps_per_epoch) up to `step`."""
    if steps_per_epoch <= 0:
        return None
    first = (epoch - 1) * steps_per_epoch + 1
    losses = [loss for s, loss in history if first <= s <= step]
    return sum(losses) / len(losses) if losses else None


def epoch_label(f: SavedFile) -> str:
    """How a file is named in grids and tables: "epoch 3", "step 40", "final (epoch 4)", "interrupted (step 17)"."""
    if f.kind == "epoch":
        return f"epoch {f.epoch}"
    if f.kind == "step":
        return f"step {f.step}"
    return f"{f.kind} (step {f.step})"


def file_metadata(path: str | Path) -> dict[str, str]:
    """A saved LoRA's `__metadata__` ({} when there is none to read): through model/safetensors_header, so a header
    that is a JSON list or a FIFO in the file's place neither raises nor hangs the Results tab's handler."""
    from loratrainer.model.safetensors_header import HeaderError, read_metadata

    try:
        return read_metadata(path)
    except HeaderError:
        return {}
