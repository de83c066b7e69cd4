"""The GUI's handle on training processes: start, follow, stop, and find again after a page reload.

The GUI never trains: `start` goes through launch.start.start_run like the CLI, and everything shown about a run
comes from its event stream (one run/events.RunReader per run), plus the log's tail for the log box. Run folders started from the GUI are remembered
in `<state_dir>/gui-runs.json`, so a reloaded page (or a restarted GUI) re-attaches to the newest run whose
process is alive, or shows how the last one ended.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.files import atomic_write, free_name_beside
from loratrainer.messages import Msg, define

define({
    "gui.run_busy": "a run is still going: {run}. Stop it first.",
    "gui.runs_file_set_aside": "the list of earlier runs ({path}) was damaged and has been kept as {kept}; new runs are listed again from now on",
})
log = logging.getLogger("loratrainer.gui")

REGISTRY_FILE = "gui-runs.json"
KEEP_RUNS = 50
LOG_TAIL_LINES = 40


@dataclass
class JobView:
    """What the page shows about one run."""

    run_dir: Path
    state: events.RunState
    alive: bool
    outcome: str  # "running", an ended status, or "killed (signal 9)" / "error (exit code 3)"
    log_tail: str

    @property
    def done(self) -> bool:
        return not self.alive

    @property
    def samples(self) -> list[dict[str, Any]]:
        return list(self.state.samples)  # sample events, oldest first

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.state.checkpoints)

    @property
    def states(self) -> list[dict[str, Any]]:
        return list(self.state.saved_states)  # state_saved events: the folders Resume can use


class Jobs:
    """Shared by every browser session of one GUI process; all methods are thread-safe."""

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir)
        self._lock = threading.RLock()
        self._processes: dict[Path, Any] = {}  # run_dir -> launch.RunProcess started by this GUI process
        self._followed: dict[Path, events.RunReader] = {}
        self.notices: list[Msg] = []  # what the page should tell once (a damaged runs file set aside)
        self.queue_notices: list[Msg] = []  # a damaged queue file set aside, whichever tab read it (the Queue tab says it)

    # -- starting and stopping -------------------------------------------------------------------------

    def start(self, config) -> Path:
        """Check and start a run; raises LaunchRefused (a UserError) with the report when it must not start."""
        from loratrainer.launch.start import start_run

        with self._lock:
            running = self.active()
            if running is not None:
                from loratrainer.launch.start import LaunchRefused

                raise LaunchRefused(Msg.of("gui.run_busy", run=str(running)))
            process = start_run(config)
            self._processes[process.run_dir] = process
            self._remember(process.run_dir)
            return process.run_dir

    def stop(self, run_dir: str | Path) -> None:
        """Ask the trainer to save `<name>-interrupted` and stop (the STOP file)."""
        run_dir = Path(run_dir)
        process = self._processes.get(run_dir)
        if process is not None:
            process.request_stop()
        else:
            atomic_write(run_dir / run_files.STOP_FILE, f"stop requested at {events.now_iso()}\n")

    def stop_now(self, run_dir: str | Path) -> None:
        """End the run at once without saving (the page's Stop now, offered when a stop takes too long): the
        STOP_NOW mark says so afterwards, then every process of the run is killed."""
        try:
            atomic_write(Path(run_dir) / run_files.STOP_NOW_FILE, f"stop now at {events.now_iso()}\n")
        except OSError:
            pass  # the run folder is gone or full: killing matters more than the note
        self.kill(run_dir)

    def kill(self, run_dir: str | Path) -> None:
        process = self._processes.get(Path(run_dir))
        if process is not None:
            process.kill()
            return
        from loratrainer.machine import child_processes
        from loratrainer.launch.processes import kill_all

        pid = self._follow(Path(run_dir)).pid
        if pid and _alive(pid):
            child_processes.kill([pid])
        kill_all(run_dir)  # a run this GUI did not start (page reloaded after a restart): every worker of it

    # -- finding runs ----------------------------------------------------------------------------------------

    def runs(self) -> list[Path]:
        """Remembered run folders that still exist, newest first."""
        path = self.state_dir / REGISTRY_FILE
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError, RecursionError):
            names = None
        if not isinstance(names, list):  # null, a number, an object or broken JSON: keep it aside, start afresh
            self._set_aside(path)
            return []
        return [Path(p) for p in names if isinstance(p, str) and "\0" not in p and _is_dir(p)]

    def all_runs(self) -> list[Path]:
        """The page's runs and the queue's (whose run folders only the queue file knows), newest first."""
        from loratrainer.errors import UserError

        runs = self.runs()
        try:
            queued = [Path(i.run_dir) for i in self.queue().items() if i.run_dir and _is_dir(i.run_dir)]
        except (UserError, OSError):
            queued = []
        extra = [p for p in queued if p not in runs]
        if not extra:
            return runs
        return sorted(runs + extra, key=_started_at, reverse=True)

    def run_that_saved(self, state_folder: str | Path) -> Path | None:
        """The run whose `state_saved` event wrote this state folder (what a resumed run continued)."""
        target = Path(state_folder)
        for run_dir in self.all_runs():
            if any(Path(str(e.get("path", ""))) == target for e in self._follow(run_dir).saved_states):
                return run_dir
        return None

    def _set_aside(self, path: Path) -> None:
        with self._lock:
            kept = free_name_beside(path, "damaged")  # never over an earlier set-aside copy
            try:
                os.replace(path, kept)
            except FileNotFoundError:
                return  # another session set it aside a moment ago
            except OSError:
                return
            notice = Msg.of("gui.runs_file_set_aside", path=str(path), kept=str(kept))
            self.notices.append(notice)
            log.warning("%s", notice)

    def active(self) -> Path | None:
        """The newest run whose process is alive."""
        for run_dir in self.runs():
            if self.view(run_dir).alive:
                return run_dir
        return None

    def current(self) -> Path | None:
        """What a freshly loaded page shows: the running job (the page's, else the queue's), else the newest run."""
        active = self.active() or self.queue_run()
        if active is not None:
            return active
        runs = self.runs()
        return runs[0] if runs else None

    def _remember(self, run_dir: Path) -> None:
        runs = [str(run_dir)] + [str(p) for p in self.runs() if p != run_dir]
        atomic_write(self.state_dir / REGISTRY_FILE, json.dumps(runs[:KEEP_RUNS], indent=1) + "\n")

    # -- following a run -----------------------------------------------------------------------------------

    def _follow(self, run_dir: Path) -> events.RunState:
        """The run as its events say it so far (what was appended since the last call is read and folded in)."""
        with self._lock:
            return self._followed.setdefault(run_dir, events.RunReader(run_dir)).read()

    def run_state(self, run_dir: str | Path) -> events.RunState:
        """What a run's events say so far (no process is looked at): the Queue table's reasons."""
        return self._follow(Path(run_dir))

    def view(self, run_dir: str | Path) -> JobView:
        run_dir = Path(run_dir)
        state = self._follow(run_dir)
        process = self._processes.get(run_dir)
        if process is not None:
            returncode = process.poll()  # the whole run, and "killed (signal N)" when accelerate outlived its child
            alive = returncode is None
        else:
            returncode = None
            # before its `started` event (loading, caching) a run this GUI did not start (the queue's, or one from
            # before a GUI restart) has no pid in its events: its process records say whether it lives
            alive = not state.done and (_alive(state.pid) if state.pid is not None else _run_alive(run_dir))
        if alive:
            outcome = "running"
        elif state.done:
            outcome = state.status
        elif returncode is not None:
            state = self._follow(run_dir)  # the last events may have landed after the poll above
            outcome = state.status if state.done else events.describe_exit(returncode)
        else:
            outcome = "killed" if state.pid is not None else "error"
        return JobView(run_dir, state, alive, outcome, log_tail(run_dir))

    def queue_run(self) -> Path | None:
        """The run folder of the queue's running item while its run lives (the Training tab follows it)."""
        for item in self._queue_running():
            if item.run_dir and _is_dir(item.run_dir) and self.view(item.run_dir).alive:
                return Path(item.run_dir)
        return None

    def queue_busy(self) -> bool:
        """Whether the queue has a run going or about to start (the Training tab keeps looking for it)."""
        return bool(self._queue_running())

    def queue(self):
        """The queue file (read anew on each call); what it sets aside as damaged is kept in queue_notices, so the
        Queue tab says it even when another tab's read found it (RunQueue's own notices last one call)."""
        from loratrainer.launch.run_queue import RunQueue

        queue = RunQueue()
        queue.notices = self.queue_notices
        return queue

    def _queue_running(self) -> list:
        from loratrainer.errors import UserError
        from loratrainer.launch.run_queue import RUNNING

        try:
            return [item for item in self.queue().items() if item.status == RUNNING]
        except (UserError, OSError):
            return []


def log_tail(run_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of the trainer's own log (train.log), plus any traceback that only reached console.log
    (a crash before or outside the trainer's logging, in accelerate or a worker process).

    console.log also holds a copy of every train.log line and the libraries' noise (progress bars such as
    transformers' "Loading weights", warnings), so it is shown whole only when there is no train.log at all,
    and then without progress bars."""
    from loratrainer.run.files import CONSOLE_FILE

    ours = _read_tail(run_dir / run_files.LOG_FILE)
    console = _read_tail(run_dir / CONSOLE_FILE)
    if not ours.strip():
        kept = [line for line in console.splitlines() if not _is_progress_bar(line)]
        return "\n".join(kept[-lines:])
    out = ours.rstrip("\n").splitlines()
    for block in _tracebacks(console):
        if block[-1].startswith("subprocess.CalledProcessError"):
            continue  # accelerate launch reporting the trainer's exit code (also 10 for a stopped run): not news
        if block[-1] not in ours:  # the trainer logged this one itself
            out += [""] + block
    return "\n".join(out[-lines:])


def _read_tail(path: Path, limit: int = 64 * 1024) -> str:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", errors="replace").replace("\r\n", "\n")
    except OSError:
        return ""


_PROGRESS_BAR = re.compile(r"\d+%\|.*\||\|\s*\d+/\d+\s*\[")


def _is_progress_bar(line: str) -> bool:
    """tqdm lines ("Loading weights:  50%|#####     | 98/196 [00:01<00:01, 90it/s]"), also \\r-joined ones."""
    return "\r" in line or bool(_PROGRESS_BAR.search(line))


def _tracebacks(text: str) -> list[list[str]]:
    """Each `Traceback (most recent call last):` block: its indented frames and the exception line(s) after."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            current = [line]
            blocks.append(current)
        elif current is not None:
            current.append(line)
            if line.strip() and not line.startswith((" ", "\t")):
                current = None  # the exception line ends the block
    return blocks


def _started_at(run_dir: Path) -> float:
    try:
        return (run_dir / run_files.CONFIG_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _is_dir(path: str) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):  # a name too long for the file system
        return False


def _run_alive(run_dir: Path) -> bool:
    from loratrainer.launch.processes import alive

    try:
        return alive(run_dir)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    # not os.kill(pid, 0): on Windows that is TerminateProcess, not a question
    from loratrainer.machine import child_processes

    return child_processes.alive(pid)
