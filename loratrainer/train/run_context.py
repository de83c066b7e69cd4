"""The run as the training process reports it: one `RunContext` per run, on the Trainer as `t.run`.

It holds where the run writes besides the LoRA files (the event stream and TensorBoard, main process only),
what the run is doing (`phase`, for an out-of-memory message) and the last LoRA file written (for a NaN
message). The entry point creates it, the loop, the saver and sampling write through it, and the outcome is
classified from it; nothing opens a writer of its own.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from loratrainer.run import events
from loratrainer.run.files import stop_requested


class StoppedBeforeTraining(Exception):
    """A stop (the STOP file, Ctrl-C, SIGTERM) seen while the model loaded or latents were cached: there is no
    trained LoRA yet, so the run ends "stopped" with nothing saved (docs/reliability.md row 21a)."""

    def __init__(self, phase: str):
        super().__init__(phase)
        self.phase = phase


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
    phase_interval_s: float = 0.5  # phase events at most twice a second, plus the first and the last item
    _phase_clock: dict = field(default_factory=dict)  # phase -> (started, last event) in time.monotonic()

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

    def check_stop(self) -> None:
        """Between the items of a phase before training (loading, latent and text caching): a stop asked now ends
        the run within one item instead of after the whole phase (a 512 px cache took 6 minutes)."""
        if stop_requested(self.run_dir):
            raise StoppedBeforeTraining(self.phase)

    def phase_progress(self, phase: str, done: int | None = None, total: int | None = None) -> None:
        """A `phase` event: what the run does before (or between) steps, with a count and the time left when it
        has items (`{"event": "phase", "phase": "caching_latents", "done": 240, "total": 1870, "eta_s": 170}`)."""
        now = time.monotonic()
        started, last = self._phase_clock.get(phase, (now, 0.0))
        self._phase_clock[phase] = (started, last)
        edge = done is None or done in (0, 1) or done == total
        if not edge and now - last < self.phase_interval_s:
            return
        self._phase_clock[phase] = (started, now)
        eta = None
        if done and total and now > started:  # the rate so far; item 0 (loading first) is not timed
            eta = round((total - done) * (now - started) / done, 1)
        self.emit("phase", phase=phase, done=done, total=total, eta_s=eta)
