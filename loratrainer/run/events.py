"""The trainer -> GUI/CLI event stream (JSON lines; docs/architecture.md). Its file names are run/files.py.

The trainer's main process appends one JSON object a line to `<run_dir>/events.jsonl`. Everything that reads a run
(the page, `loratrainer train`, the queue, Results and compare, `RunProcess`' exit code) reads it through one
`RunReader`: `read_events` from an offset, folded into one `RunState` by `summarize`. Programs read events, people
read train.log: nobody scrapes a progress bar or a log line.

It imports only the standard library and run/files.py (names), so the GUI can use it without torch.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loratrainer.run.files import EVENTS_FILE

# -- statuses and exit codes ------------------------------------------------------------------------------------

EXIT_CODES: dict[str, int] = {"finished": 0, "stopped": 10, "nan": 11, "oom": 12, "disk_full": 13, "error": 1}
STATUS_OF_EXIT_CODE: dict[int, str] = {code: status for status, code in EXIT_CODES.items()}
EVENT_KINDS = ("started", "phase", "progress", "checkpoint", "sample", "state_saved", "validation", "note", "ended")
# What a `phase` event names: before training (a count of items where there are items), and between steps.
PHASES = ("loading_model", "caching_latents", "caching_text", "sampling", "saving", "training")
CHECKPOINT_KINDS = ("epoch", "step", "final", "interrupted")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class EventWriter:
    """Appends events to events.jsonl, one flushed line each. Use it in the main process only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()  # a warning logged by another thread (train/launcher_watch.py) is a `note` too

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        if event not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {event!r}")
        record = {"event": event, "time": now_iso(), **fields}
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if self._fh.closed:
                return record
            self._fh.write(line)
            self._fh.flush()  # a reader polling the file sees whole lines as soon as they happen
        return record

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events after byte `offset`, and the offset to continue from.

    A partial last line (the writer is mid-write) is left for the next call; a line that is not valid JSON
    is skipped. A missing file yields no events and the same offset.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events = []
    for line in data[: end + 1].splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and "event" in record:
            events.append(record)
    return events, offset + end + 1


@dataclass
class RunState:
    """What a run is doing, folded from its events. `status` is "starting" until the first event,
    "running" until `ended`, then the ended status (or "killed" when the launcher says so)."""

    status: str = "starting"
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    avg_loss: float | None = None
    lr: float | None = None
    it_per_s: float | None = None
    eta_s: float | None = None
    seed: int | None = None
    mixed_precision: str | None = None  # what the trainer used (the started event), which a CPU may force to "no"
    phase: str = ""  # the last `phase` event's phase ("caching_latents", ...); "training" from `started` on
    phase_done: int | None = None
    phase_total: int | None = None
    phase_eta_s: float | None = None
    resumed_from: str = ""  # the state folder a resumed run continued from (the started event)
    pid: int | None = None  # the trainer's main process (the started event)
    steps_per_epoch: int = 0
    started: dict[str, Any] = field(default_factory=dict)  # the `started` event as written
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    # (step, epoch, loss) of each `validation` event (train/validation.py): the same noise every time, so comparable
    validation_history: list[tuple[int, int, float]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # the `checkpoint` events, oldest first
    samples: list[dict[str, Any]] = field(default_factory=list)  # the `sample` events
    saved_states: list[dict[str, Any]] = field(default_factory=list)  # the `state_saved` events: what Resume can use
    # the `note` events: what the run does otherwise than asked and the trainer's warnings, each with its coded
    # message (`msg`, run/outcomes.to_event) where it has one and always its English `text`
    notes: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""  # the `ended` event's English reason (the CLI's and train.log's words)
    msg: dict[str, Any] | None = None  # the `ended` event's coded reason (run/outcomes.py), said by the page
    ended: dict[str, Any] | None = None  # the `ended` event as written
    exit_code: int | None = None

    @property
    def done(self) -> bool:
        return self.status not in ("starting", "running")

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def last_files(self) -> list[str]:
        """The LoRA files the run saved (checkpoint events), oldest first."""
        return [str(e.get("path", "")) for e in self.checkpoints]


class RunReader:
    """The one reader of a run folder's event stream: each `read()` reads what was appended since the last one and
    folds it into the same RunState (a partial last line waits for the next read). The page keeps one per run it
    follows, `loratrainer train` one for its run; `read_run_state(run_dir)` reads a whole run once."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = 0
        self.state = RunState()
        self.new: list[dict[str, Any]] = []  # the events the last read() found (`loratrainer train` prints them)

    def read(self) -> RunState:
        self.new, self.offset = read_events(self.path, self.offset)
        return summarize(self.new, self.state)


def read_run_state(run_dir: str | Path) -> RunState:
    """A run as its events say it, read from the start."""
    return RunReader(run_dir).read()


def summarize(events: list[dict[str, Any]], state: RunState | None = None) -> RunState:
    """Fold events into a RunState; pass the previous state to continue incrementally."""
    state = state or RunState()
    for e in events:
        _APPLY.get(e.get("event", ""), _ignore)(state, e)
    return state


def _started(s: RunState, e: dict[str, Any]) -> None:
    s.status = "running"
    s.started = e
    s.pid = int(e["pid"]) if isinstance(e.get("pid"), int) and e["pid"] > 0 else None
    s.steps_per_epoch = int(e.get("steps_per_epoch") or 0)
    s.total_steps = int(e.get("total_steps", 0))
    s.epochs = int(e.get("epochs", 0))
    s.seed = e.get("seed")
    s.mixed_precision = e.get("mixed_precision")
    s.resumed_from = str(e.get("resumed_from") or "")
    _set_phase(s, "training")


def _phase(s: RunState, e: dict[str, Any]) -> None:
    _set_phase(s, str(e.get("phase", "")), e.get("done"), e.get("total"), e.get("eta_s"))


def _set_phase(s: RunState, phase: str, done: Any = None, total: Any = None, eta: Any = None) -> None:
    s.phase = phase
    s.phase_done = int(done) if isinstance(done, (int, float)) else None
    s.phase_total = int(total) if isinstance(total, (int, float)) else None
    s.phase_eta_s = float(eta) if isinstance(eta, (int, float)) else None


def _progress(s: RunState, e: dict[str, Any]) -> None:
    s.status = "running" if s.status == "starting" else s.status
    for name in ("step", "epoch", "total_steps", "epochs"):
        if name in e:
            setattr(s, name, int(e[name]))
    for name in ("loss", "avg_loss", "lr", "it_per_s", "eta_s"):
        if name in e:
            setattr(s, name, e[name])
    if e.get("loss") is not None:
        s.loss_history.append((int(e.get("step", 0)), float(e["loss"])))


def _checkpoint(s: RunState, e: dict[str, Any]) -> None:
    s.checkpoints.append(e)


def _state_saved(s: RunState, e: dict[str, Any]) -> None:
    s.saved_states.append(e)


def _note(s: RunState, e: dict[str, Any]) -> None:
    said = (e.get("text"), json.dumps(e.get("msg"), sort_keys=True, default=str))
    if all((n.get("text"), json.dumps(n.get("msg"), sort_keys=True, default=str)) != said for n in s.notes):
        s.notes.append(e)  # a warning logged again (for each cached image) is one note


def _validation(s: RunState, e: dict[str, Any]) -> None:
    if e.get("loss") is not None:
        s.validation_history.append((int(e.get("step", 0)), int(e.get("epoch", 0)), float(e["loss"])))


def lowest_validation(history: list[tuple[int, int, float]]) -> tuple[int, int, float] | None:
    """The (step, epoch, loss) of the lowest validation loss (the earliest on a tie), or None."""
    return min(history, key=lambda v: (v[2], v[0])) if history else None


def _sample(s: RunState, e: dict[str, Any]) -> None:
    s.samples.append(e)


def _ended(s: RunState, e: dict[str, Any]) -> None:
    s.status = str(e.get("status", "error"))
    s.reason = str(e.get("reason", ""))
    s.msg = e["msg"] if isinstance(e.get("msg"), dict) else None
    s.ended = e
    s.step = int(e.get("step", s.step))
    s.epoch = int(e.get("epoch", s.epoch))
    s.exit_code = e.get("exit_code", EXIT_CODES.get(s.status))
    _set_phase(s, "")


def _ignore(s: RunState, e: dict[str, Any]) -> None:
    pass


_APPLY = {"started": _started, "phase": _phase, "progress": _progress, "checkpoint": _checkpoint, "sample": _sample,
          "state_saved": _state_saved, "validation": _validation, "note": _note, "ended": _ended}


_HEADLINES = {"nan": "NaN at step {step}", "oom": "out of memory", "disk_full": "disk full"}


def headline(state: RunState, returncode: int | None = None) -> str:
    """How a run ended in a few words: "finished", "stopped", "NaN at step 37", "out of memory", "disk full",
    "error", or (no `ended` event) what the exit code says, e.g. "killed (signal 9)"."""
    if not state.done:
        return describe_exit(returncode) if returncode is not None else state.status
    return _HEADLINES.get(state.status, state.status).format(step=state.step)


def describe_exit(returncode: int) -> str:
    """'finished', 'stopped', ... or 'killed (signal 9)' for a process's return code (negative = signal)."""
    if returncode < 0:
        return f"killed (signal {-returncode})"
    if returncode > 128 and returncode - 128 < 65:  # a shell or launcher reporting a signal death
        return f"killed (signal {returncode - 128})"
    return STATUS_OF_EXIT_CODE.get(returncode, f"error (exit code {returncode})")

