"""The run as the training process reports it: one `RunContext` per run, on the Trainer as `t.run`.

It holds where the run writes besides the LoRA files (the event stream and TensorBoard, main process only),
what the run is doing (`phase`, for an out-of-memory message) and the last LoRA file written (for a NaN
message). The entry point creates it, the loop, the saver and sampling write through it, and the outcome is
classified from it; nothing opens a writer of its own.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from loratrainer import events


@dataclass
class RunContext:
    run_dir: Path
    events: events.EventWriter | None = None  # the main process's event stream; None elsewhere
    tensorboard: Any = None  # torch.utils.tensorboard.SummaryWriter on the main process, once training starts
    phase: str = "starting"
    last_file: Path | None = None  # the last LoRA file written
    trainer: Any = None  # the Trainer, once built: step and epoch are its own
    reporter: Any = None  # the ProgressReporter, once training starts (the epoch's mean loss so far)
    ended_msg: Any = None  # a coded message (launch.outcomes) for the `ended` event, where the outcome has one

    @property
    def step(self) -> int:
        return self.trainer.step if self.trainer is not None else 0

    @property
    def epoch(self) -> int:
        return self.trainer.epoch if self.trainer is not None else 0

    def emit(self, event: str, **fields: Any) -> None:
        """An event on the stream (the main process's; the others have none)."""
        if self.events is not None:
            self.events.emit(event, **fields)

    @contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        """Name what the run is doing (an out-of-memory message says it); restored unless the body fails."""
        before, self.phase = self.phase, phase
        yield
        self.phase = before
