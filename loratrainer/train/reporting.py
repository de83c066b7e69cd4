"""Reporting progress: events (throttled), TensorBoard scalars, train.log lines; and the trainer's warnings as `note`
events. Main process only."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loratrainer.messages import Msg
from loratrainer.run.events import EventWriter
from loratrainer.run.notes import note_event

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("loratrainer.train")


class NoteEvents(logging.Handler):
    """Every warning the package logs in the trainer (`log.warning("%s", msg)` with a coded message, or a plain line)
    is also a `note` event, so the page shows it (in its language where it is coded) without reading train.log."""

    def __init__(self, writer: EventWriter):
        super().__init__(logging.WARNING)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.WARNING:
            return  # errors end the run: the `ended` event says them
        args = record.args if isinstance(record.args, tuple) else ()
        msg = args[0] if record.msg == "%s" and len(args) == 1 and isinstance(args[0], Msg) else None
        try:
            self.writer.emit("note", **note_event(msg, record.getMessage()))
        except (OSError, ValueError):
            self.handleError(record)


def report_warnings(writer: EventWriter) -> NoteEvents:
    """Start turning the package's warnings into `note` events (the `loratrainer` logger and every one below it)."""
    handler = NoteEvents(writer)
    logging.getLogger("loratrainer").addHandler(handler)
    return handler


def report_config_notes(writer: EventWriter, notes: list[Msg]) -> None:
    """The config's own notes (TrainingConfig.summary_messages: a UNet-only LoRA, max steps over epochs, ...), which
    the CLI prints before a run, as `note` events for the page."""
    for note in notes:
        writer.emit("note", **note_event(note, str(note), level="note"))


@dataclass
class ProgressReporter:
    events: EventWriter | None
    tensorboard: SummaryWriter | None
    total_steps: int
    epochs: int
    min_interval_s: float = 0.5  # an event at most twice a second, plus the first and the last step
    log_every_s: float = 30.0
    _window: deque = field(default_factory=lambda: deque(maxlen=50))
    _times: deque = field(default_factory=lambda: deque(maxlen=20))
    _last_event: float = 0.0
    _last_log: float = 0.0
    # The mean loss of the epoch so far, over every step (not the throttled events): each checkpoint event
    # carries it, and Results shows it beside the file.
    _epoch: int = 0
    _epoch_sum: float = 0.0
    _epoch_count: int = 0

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        now = time.monotonic()
        if epoch != self._epoch:
            self._epoch, self._epoch_sum, self._epoch_count = epoch, 0.0, 0
        self._epoch_sum += loss
        self._epoch_count += 1
        self._window.append(loss)
        self._times.append(now)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("loss/step", loss, step)
            self.tensorboard.add_scalar("lr", lr, step)
        last = step >= self.total_steps
        if self.events is not None and (last or step == 1 or now - self._last_event >= self.min_interval_s):
            self._last_event = now
            self.events.emit("progress", **self.snapshot(step, epoch, loss, lr))
        if last or now - self._last_log >= self.log_every_s:
            self._last_log = now
            s = self.snapshot(step, epoch, loss, lr)
            log.info("step %d/%d epoch %d/%d loss %.4f avg %.4f lr %.3g %.2f it/s", step, self.total_steps, epoch, self.epochs, loss, s["avg_loss"], lr, s["it_per_s"] or 0)

    def snapshot(self, step: int, epoch: int, loss: float, lr: float) -> dict:
        rate = (len(self._times) - 1) / (self._times[-1] - self._times[0]) if len(self._times) > 1 and self._times[-1] > self._times[0] else None
        eta = (self.total_steps - step) / rate if rate else None
        return {
            "step": step, "total_steps": self.total_steps, "epoch": epoch, "epochs": self.epochs, "loss": loss,
            "avg_loss": sum(self._window) / len(self._window), "lr": lr,
            "it_per_s": round(rate, 3) if rate else None, "eta_s": round(eta, 1) if eta is not None else None,
        }

    def epoch_loss(self) -> float | None:
        return self._epoch_sum / self._epoch_count if self._epoch_count else None

    def epoch_end(self, epoch: int, step: int) -> None:
        if self.tensorboard is not None and self._window:
            self.tensorboard.add_scalar("loss/epoch_avg", sum(self._window) / len(self._window), epoch)
        log.info("epoch %d/%d done at step %d", epoch, self.epochs, step)
