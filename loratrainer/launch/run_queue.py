"""The queue of runs: one JSON file in the user's config folder, changed only under a lock, written atomically.

Each item holds the whole resolved config as it was when it was added (a later edit of the source file does
not change a queued run), where it came from, and how it went. The file survives a restart of the GUI or of
the machine: an item left `running` by a runner that is gone is settled on the next read (`interrupted`, or the
status its run folder's `ended` event says). No torch, no gradio: the CLI, the GUI and the runner import it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import stat
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from loratrainer.launch import run_messages
from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.errors import UserError
from loratrainer.files import atomic_write, free_name_beside
from loratrainer.messages import Msg, define

QUEUE_FILE = "queue.json"
PENDING, RUNNING, INTERRUPTED, FAILED = "pending", "running", "interrupted", "failed"
DONE_OK = ("finished", "stopped")  # a run the user stopped is not a failure: the queue goes on

define({
    "queue.no_item": "no queued run with id {id}",
    "queue.item_running": "queued run {id} is running: stop it first",
    "queue.unreadable": "the queue file {path} cannot be read ({detail}); it was left as it is",
    "queue.set_aside": "the queue file {path} was damaged ({detail}) and has been kept as {kept}; the queue starts empty",
    "queue.stopped_now": "ended at once with Stop now: nothing more was saved",
})
log = logging.getLogger("loratrainer.queue")
MAX_QUEUE_BYTES = 64 * 2**20  # a queued item holds a whole config (a few KB): thousands fit


class QueueError(UserError):
    def __init__(self, message: str | Msg):
        super().__init__(message)


@dataclass
class QueueItem:
    id: str
    name: str  # output_name, what the list shows
    source: str  # the config file it was added from ("" from the GUI)
    overrides: list[str]  # the --set assignments given with it
    config: dict[str, Any]  # our config JSON, resolved when added
    status: str = PENDING  # pending, running, interrupted, failed, or a run's ended status (finished, stopped, nan, ...)
    added: str = ""
    started: str = ""
    ended: str = ""
    run_dir: str = ""
    reason: str = ""
    exit_code: int | None = None
    runner: dict[str, Any] = field(default_factory=dict)  # {pid, start, host} of the runner while running

    @property
    def failed(self) -> bool:
        return self.status not in (PENDING, RUNNING, *DONE_OK)


def queue_dir() -> Path:
    """LORATRAINER_CONFIG_DIR, else $XDG_CONFIG_HOME/loratrainer, else ~/.config/loratrainer (beside presets/)."""
    env = os.environ.get("LORATRAINER_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "loratrainer"


class RunQueue:
    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else queue_dir()
        self.path = self.folder / QUEUE_FILE
        self.notices: list[Msg] = []  # what to tell once (a damaged queue file set aside)

    # -- the lock and the file -----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[list[QueueItem]]:
        """The items under the lock; what the block leaves in the list is written back (atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path.with_name(QUEUE_FILE + ".lock")):
            items = self._read()
            before = [asdict(i) for i in items]
            yield items
            if [asdict(i) for i in items] != before:
                atomic_write(self.path, json.dumps({"items": [asdict(i) for i in items]}, indent=1, ensure_ascii=False) + "\n")

    def _read(self) -> list[QueueItem]:
        """The items, from a regular file of the shape we write. Anything else (null, 42, "x", {"runs": 5},
        broken JSON, a FIFO, a folder) is set aside as `queue.json.damaged-<stamp>` and said (`notices`), as the
        GUI's runs file is: an AttributeError traceback, a hang on a FIFO and a silent overwrite were the old ways.
        Broken JSON (a hand edit gone wrong) is reported and left in place to be fixed."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise QueueError(Msg.of("queue.unreadable", path=str(self.path), detail=exc.strerror or str(exc))) from None
        problem, raw = "", b""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                problem = "not a regular file"
            elif st.st_size > MAX_QUEUE_BYTES:
                problem = f"larger than {MAX_QUEUE_BYTES // 2**20} MB"
            else:
                with os.fdopen(os.dup(fd), "rb") as fh:
                    raw = fh.read(MAX_QUEUE_BYTES + 1)
        except OSError as exc:
            raise QueueError(Msg.of("queue.unreadable", path=str(self.path), detail=exc.strerror or str(exc))) from None
        finally:
            os.close(fd)
        try:
            items = None if problem else _items_of(raw)
        except (ValueError, RecursionError) as exc:  # broken JSON: a hand edit to fix; reported, left as it is
            raise QueueError(Msg.of("queue.unreadable", path=str(self.path), detail=str(exc)[:200])) from None
        if items is None:
            self._set_aside(problem or "not a queue this program wrote")
            return []
        return items

    def _set_aside(self, detail: str) -> None:
        kept = free_name_beside(self.path, "damaged")  # never over an earlier set-aside copy
        try:
            os.replace(self.path, kept)
        except OSError as exc:
            raise QueueError(Msg.of("queue.unreadable", path=str(self.path), detail=exc.strerror or str(exc))) from None
        notice = Msg.of("queue.set_aside", path=str(self.path), detail=detail, kept=str(kept))
        self.notices.append(notice)
        log.warning("%s", notice)

    # -- what the CLI and the GUI do -------------------------------------------------------------------------

    def add(self, config, source: str = "", overrides: list[str] | None = None) -> QueueItem:
        from loratrainer.config import config_to_json

        item = QueueItem(id=uuid.uuid4().hex[:8], name=config.folders.output_name, source=str(source),
                         overrides=list(overrides or []), config=json.loads(config_to_json(config)), added=events.now_iso())
        with self._locked() as items:
            items.append(item)
        return item

    def items(self) -> list[QueueItem]:
        """The queue in order, with items of a runner that is gone settled first."""
        with self._locked() as items:
            for item in items:
                if item.status == RUNNING and not runner_alive(item.runner) and not (item.run_dir and _run_alive(item.run_dir)):
                    settle_orphan(item)  # (a run still going stays "running": the next runner waits for it)
            return [QueueItem(**asdict(i)) for i in items]

    def remove(self, item_id: str) -> QueueItem:
        with self._locked() as items:
            item = _find(items, item_id)
            if item.status == RUNNING and _still_running(item):
                raise QueueError(Msg.of("queue.item_running", id=item_id))
            items.remove(item)
            return item

    def move(self, item_id: str, delta: int) -> None:
        """Up (delta -1) or down (+1) in the order; the ends stay where they are."""
        with self._locked() as items:
            item = _find(items, item_id)
            i = items.index(item)
            j = max(0, min(len(items) - 1, i + delta))
            items.insert(j, items.pop(i))

    def clear(self) -> int:
        """Remove every item that is not running; returns how many."""
        with self._locked() as items:
            keep = [i for i in items if i.status == RUNNING and _still_running(i)]
            removed = len(items) - len(keep)
            items[:] = keep
            return removed

    def retry(self, item_id: str) -> None:
        """Put a failed or interrupted item back to pending (where it is in the order)."""
        with self._locked() as items:
            item = _find(items, item_id)
            if item.status != RUNNING:
                item.status, item.reason, item.run_dir, item.exit_code = PENDING, "", "", None

    # -- what the runner does ---------------------------------------------------------------------------------

    def claim_next(self, runner: dict[str, Any]) -> QueueItem | None:
        """The item to run now, marked running by `runner`: one a gone runner left running whose run still
        lives (adopted: we wait for it), else the first pending one."""
        with self._locked() as items:
            for item in items:
                if item.status == RUNNING and not runner_alive(item.runner):
                    if item.run_dir and _run_alive(item.run_dir):
                        item.runner = runner
                        return QueueItem(**asdict(item))
                    settle_orphan(item)
            for item in items:
                if item.status == PENDING:
                    item.status, item.started, item.runner = RUNNING, events.now_iso(), runner
                    return QueueItem(**asdict(item))
        return None

    def update(self, item_id: str, **values: Any) -> None:
        with self._locked() as items:
            try:
                item = _find(items, item_id)
            except QueueError:
                return  # removed meanwhile (it was not running): nothing to record
            for key, value in values.items():
                setattr(item, key, value)


def _items_of(raw: bytes) -> list[QueueItem] | None:
    """The items of a queue file's bytes; None when they are not `{"items": [{...}, ...]}` as we write it."""
    data = json.loads(raw.decode("utf-8"))  # broken JSON: the caller reports it and leaves the file as it is
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        return None
    known = set(QueueItem.__dataclass_fields__)
    try:
        items = [QueueItem(**{k: v for k, v in item.items() if k in known}) for item in data["items"]]
    except (AttributeError, TypeError):  # an item that is not an object, or lacks a field
        return None
    if not all(isinstance(i.id, str) and isinstance(i.status, str) and isinstance(i.config, dict)
               and isinstance(i.runner, dict) for i in items):
        return None
    return items


def _find(items: list[QueueItem], item_id: str) -> QueueItem:
    for item in items:
        if item.id == item_id:
            return item
    raise QueueError(Msg.of("queue.no_item", id=item_id))


def this_runner() -> dict[str, Any]:
    from loratrainer.run.records import start_ticks

    return {"pid": os.getpid(), "start": start_ticks(os.getpid()), "host": socket.gethostname()}


def runner_alive(runner: dict[str, Any]) -> bool:
    from loratrainer.run.records import ProcessRecord, is_alive

    if not runner or not runner.get("pid"):
        return False
    return is_alive(ProcessRecord("runner", int(runner["pid"]), 0, runner.get("start"), runner.get("host", "")))


def _still_running(item: QueueItem) -> bool:
    """Its runner lives, or its run does: a trainer whose runner was killed is still running (removing it let a
    second run start beside it)."""
    return runner_alive(item.runner) or bool(item.run_dir and _run_alive(item.run_dir))


def _run_alive(run_dir: str) -> bool:
    from loratrainer.launch.processes import alive

    return alive(run_dir)


def settle_orphan(item: QueueItem) -> None:
    """A running item whose runner and run are gone: the run's own `ended` status if it wrote one, else interrupted."""
    state = events.read_run_state(item.run_dir) if item.run_dir else None
    if state is not None and state.done:
        item.status, item.reason = state.status, str(run_messages.queue_reason(state) or "")
    else:
        item.status, item.reason = INTERRUPTED, item.reason or "the queue runner ended while this run was going"
    item.ended, item.runner = item.ended or events.now_iso(), {}


def item_reason(item: QueueItem, read_state: Callable[[str], events.RunState] = events.read_run_state) -> Msg | str:
    """Why an item ended, in one sentence, for the GUI's Queue column and `loratrainer queue list` alike (the GUI says it
    in the page's language, the CLI in English): what its run's events say (outcomes.queue_reason: the coded end
    reason; a plain stop, where and what it saved), Stop now where that killed it (no `ended` event), else the reason
    the queue file recorded (a run that never started). `read_state`: the GUI passes its own followers' reader."""
    if item.run_dir and item.status not in (PENDING, RUNNING) and "\0" not in item.run_dir and Path(item.run_dir).is_dir():
        said = run_messages.queue_reason(read_state(item.run_dir))
        if said is not None:
            return said
        if (Path(item.run_dir) / run_files.STOP_NOW_FILE).exists():  # killed by Stop now, as asked: no `ended` event
            return Msg.of("queue.stopped_now")
    return item.reason


# -- the lock ---------------------------------------------------------------------------------------------------


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An OS lock on a side file: released by the kernel when its holder dies, so a killed process never
    leaves the queue locked."""
    with open(path, "a+b") as fh:
        if sys.platform == "win32":  # pragma: no cover  (not run here: checked by tests/test_platform_types.py)
            import msvcrt

            fh.seek(0)
            while True:
                try:  # LK_LOCK tries for 10 seconds, then raises: a long queue write is waited for
                    msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextmanager
def runner_lock(folder: Path, wait_s: float = 0.0) -> Iterator[bool]:
    """Held by the one queue runner for its whole life; yields False when another runner holds it. `wait_s`: how long
    to keep trying (the runner): `runner_running`, which the page asks every refresh, takes the lock for an instant, and
    a runner starting in that instant took it for another runner's and quit."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with open(folder / (QUEUE_FILE + ".runner"), "a+b") as fh:
        if sys.platform == "win32":  # pragma: no cover  (a region lock, also dropped when its holder dies)
            import msvcrt

            fh.seek(0)
            while True:
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
            return
        import fcntl

        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
