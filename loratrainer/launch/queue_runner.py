"""Running the queue: one run after another, in order, each through start_run like the CLI and the GUI.

One runner at a time (a lock held for its life). A failed run is recorded and the next one starts, unless
`stop_on_failure`. Ctrl-C or SIGTERM stop the current run (its LoRA saved as `<name>-interrupted`) and the
runner; the items after it stay pending. A runner killed outright leaves its run going: the next runner finds
that item, waits for its run to end, records how it ended, and goes on with the next pending item.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

from loratrainer.launch import run_messages
from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define
from loratrainer.launch.run_queue import DONE_OK, FAILED, RUNNING, QueueItem, RunQueue, runner_lock, this_runner

RUNNER_LOG = "queue-runner.log"  # the GUI's detached runner writes here, in the queue folder
RUNNER_LOCK_WAIT_S = 2.0  # longer than anyone but a runner holds the lock (runner_running's probe): then it is busy

define({
    "queue.runner_busy": "the queue is already being run by another process",
})


def run_queue(queue: RunQueue, *, stop_on_failure: bool = False, stream: TextIO = sys.stderr, poll_s: float = 0.5) -> int:
    """Run pending items until none is left; 0 when every run finished or was stopped, 1 when one failed,
    130 when interrupted."""
    with runner_lock(queue.folder, wait_s=RUNNER_LOCK_WAIT_S) as mine:
        if not mine:
            raise UserError(Msg.of("queue.runner_busy"))
        from loratrainer.launch.follow import _signals_as_keyboard_interrupt

        failures = 0
        with _signals_as_keyboard_interrupt():
            try:
                while True:
                    item = queue.claim_next(this_runner())
                    if item is None:
                        break
                    status = _run_item(queue, item, stream, poll_s)
                    if status not in DONE_OK:
                        failures += 1
                        if stop_on_failure:
                            _say(stream, "queue: stopping after the failed run (--stop-on-failure)")
                            break
            except KeyboardInterrupt:
                _say(stream, "queue: interrupted; the runs after this one stay pending")
                return 130
        _say(stream, f"queue: done ({failures} failed)" if failures else "queue: done")
        return 1 if failures else 0


def _run_item(queue: RunQueue, item: QueueItem, stream: TextIO, poll_s: float) -> str:
    from loratrainer.config import config_from_dict
    from loratrainer.launch.start import start_run

    if item.run_dir:  # adopted from a runner that is gone: its run still goes
        _say(stream, f"queue: {item.id} ({item.name}) is still running in {item.run_dir}: waiting for it")
        return _adopt(queue, item, stream, poll_s)
    _say(stream, f"queue: starting {item.id} ({item.name}{', from ' + item.source if item.source else ''})")
    try:
        config = config_from_dict(item.config)
        run = start_run(config)
    except UserError as exc:
        reason = str(exc)
        queue.update(item.id, status=FAILED, reason=reason, ended=events.now_iso(), runner={})
        _say(stream, f"queue: {item.id} ({item.name}) failed to start: {reason}")
        return FAILED
    queue.update(item.id, run_dir=str(run.run_dir))
    _say(stream, f"queue: {item.id} run folder: {run.run_dir}")
    notes = _Notes(item, Path(run.run_dir), stream)
    try:
        while run.poll() is None:
            notes.say_new()
            time.sleep(poll_s)
        notes.say_new()
    except KeyboardInterrupt:
        _say(stream, f"queue: stopping {item.id}: saving the current LoRA")
        try:
            run.stop()
        except KeyboardInterrupt:
            run.kill()
            run.wait()
        _finish(queue, item, Path(run.run_dir), run.exit_code(run.popen.returncode), stream)
        raise
    return _finish(queue, item, Path(run.run_dir), run.exit_code(run.popen.returncode), stream)


def _adopt(queue: RunQueue, item: QueueItem, stream: TextIO, poll_s: float) -> str:
    from loratrainer.launch import processes

    run_dir = Path(item.run_dir)
    notes = _Notes(item, run_dir, stream)
    notes.said = len(notes.reader.read().notes)  # said by the runner that started it (or not: it is in the log)
    try:
        while processes.alive(run_dir):
            notes.say_new()
            time.sleep(poll_s)
        notes.say_new()
    except KeyboardInterrupt:
        processes.stop_all(run_dir)
        _finish(queue, item, run_dir, None, stream)
        raise
    return _finish(queue, item, run_dir, None, stream)


class _Notes:
    """The running item's notes (its events' `note`s), said once each as they arrive, as `loratrainer train` says them."""

    def __init__(self, item: QueueItem, run_dir: Path, stream: TextIO):
        self.item, self.stream = item, stream
        self.reader = events.RunReader(run_dir)
        self.said = 0

    def say_new(self) -> None:
        from loratrainer.launch.follow import note_line

        state = self.reader.read()
        for note in state.notes[self.said:]:
            _say(self.stream, f"queue: {self.item.id} {note_line(note)}")
        self.said = len(state.notes)


def _finish(queue: RunQueue, item: QueueItem, run_dir: Path, code: int | None, stream: TextIO) -> str:
    state = events.read_run_state(run_dir)
    if state.done:
        status, reason = state.status, str(run_messages.queue_reason(state) or "")  # as the Queue column says it
    elif (run_dir / run_files.STOP_NOW_FILE).exists():  # the page's Stop now killed it, as the user asked
        status, reason = "stopped", str(Msg.of("queue.stopped_now"))
    else:
        status, reason = FAILED, ("ended without a result: " + events.describe_exit(code)) if code is not None else "ended without a result"
    queue.update(item.id, status=status, reason=reason, exit_code=code, ended=events.now_iso(), runner={})
    _say(stream, f"queue: {item.id} ({item.name}) {status}{': ' + reason if reason else ''}")
    return status


def _say(stream: TextIO, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except OSError:
        pass  # the terminal is gone; the queue file records everything


def start_detached(queue: RunQueue) -> int:
    """`python -m loratrainer queue run` in a session of its own (the GUI's "Run queue"): it goes on when the
    page or the GUI is closed. Returns its pid. A second runner exits at once (the lock)."""
    import subprocess

    from loratrainer.machine import child_processes

    queue.folder.mkdir(parents=True, exist_ok=True)
    log = open(queue.folder / RUNNER_LOG, "ab")
    env = {**os.environ, "LORATRAINER_CONFIG_DIR": str(queue.folder), "PYTHONUNBUFFERED": "1"}
    try:
        proc = child_processes.start([sys.executable, "-m", "loratrainer", "queue", "run"], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    finally:
        log.close()
    return proc.pid


def running_item(queue: RunQueue) -> QueueItem | None:
    for item in queue.items():
        if item.status == RUNNING:
            return item
    return None


def stop_running(queue: RunQueue) -> QueueItem | None:
    """Stop the queue's running run (its LoRA saved as `<name>-interrupted`) and the runner after it; the items
    after it stay pending. The runner is sent SIGTERM, its own stop path (STOP, wait, escalate), once: a second
    SIGTERM would make it kill the run. Returns the item, or None when nothing runs."""
    import signal
    import socket

    from loratrainer.launch.run_queue import runner_alive

    item = running_item(queue)
    if item is None:
        return None
    if item.run_dir and run_files.stop_requested(item.run_dir):
        return item  # asked already: the runner is saving and stopping
    if item.run_dir:
        try:
            (Path(item.run_dir) / run_files.STOP_FILE).write_text(f"queue stop at {events.now_iso()}\n")
        except OSError:
            pass
    if runner_alive(item.runner) and item.runner.get("host") == socket.gethostname() and os.name == "posix":
        try:
            os.kill(int(item.runner["pid"]), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    return item


def stop_now(queue: RunQueue) -> QueueItem | None:
    """End the queue's running run at once without saving (every process of it killed) and stop the runner."""
    from loratrainer.launch import processes

    item = stop_running(queue)
    if item is None or not item.run_dir:
        return item
    try:
        (Path(item.run_dir) / run_files.STOP_NOW_FILE).write_text(f"stop now at {events.now_iso()}\n")
    except OSError:
        pass
    processes.kill_all(item.run_dir)
    return item


def runner_running(queue: RunQueue) -> bool:
    with runner_lock(queue.folder) as free:
        return not free


__all__ = ["run_queue", "start_detached", "runner_running", "RUNNING"]
