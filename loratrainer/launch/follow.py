"""Following a run from a terminal: a tqdm bar on a TTY, plain lines otherwise; the trainer's exit code."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TextIO

from loratrainer.launch import run_messages
from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.run.files import CONSOLE_FILE
from loratrainer.run.phases import phase_message, stopped_before_training
from loratrainer.launch.start import RunProcess
from loratrainer.messages import Msg


def follow(run: RunProcess, stream: TextIO = sys.stderr, poll_s: float = 0.5, said: Iterable[str] = ()) -> int:
    """Show progress until the run ends; returns the trainer's exit code (EXIT_CODES) or the raw one.

    The run's notes are said once each as they arrive, but those in `said`: the config's own notes, which
    `loratrainer train` printed before the run and the trainer sends again as `note` events for the page.

    Ctrl-C, SIGTERM and SIGHUP (the terminal closed) ask the trainer to save `<name>-interrupted` and stop,
    and we wait for it (SIGTERM to every process of the run after STOP_GRACE_S, SIGKILL after TERM_GRACE_S more:
    a closed terminal cannot press Ctrl-C again); a second one kills the run, every worker included. The
    trainer runs in its own session, so without this a killed `loratrainer train` left it training on, unseen.
    """
    other_machine = _say_rank(run, stream)
    view = _Bar(stream, set(said)) if stream.isatty() else _Lines(stream, set(said))
    reader = events.RunReader(run.run_dir)
    state = reader.state
    with _signals_as_keyboard_interrupt():
        try:
            while True:
                done = run.poll() is not None
                state = reader.read()
                view.update(state, reader.new)
                if done:
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            run.request_stop()  # first: after SIGHUP (the terminal closed) the line below may fail to print
            state = _catch_up(reader, view)  # what the trainer did up to now, not at the last poll
            try:
                stream.write("stopping: saving the current LoRA (press Ctrl+C again to kill)\n" if state.status != "starting" else
                             "stopping: nothing is trained yet, so nothing will be saved (press Ctrl+C again to kill)\n")
                stream.flush()
            except OSError:
                pass
            try:
                _wait_then_escalate(run)
            except KeyboardInterrupt:
                run.kill()
                run.wait()
            state = _catch_up(reader, view)  # the saved file, a last note
    view.close()
    code = run.exit_code(run.popen.returncode)
    if other_machine:  # no events here: accelerate's own exit code says how this machine's part ended
        stream.write(f"this machine's processes ended: {events.describe_exit(code) if code else 'finished'}\n"
                     f"run folder: {run.run_dir}\n")
        return code
    _report_end(run, state, code, stream)
    return code


def _catch_up(reader: events.RunReader, view: "_Bar | _Lines") -> events.RunState:
    """Read what the run wrote since the last poll and show it (its notes, a saved file); a terminal that is gone
    (SIGHUP) does not keep the run from being stopped."""
    state = reader.read()
    try:
        view.update(state, reader.new)
    except OSError:
        pass
    return state


def note_text(note: dict) -> str:
    """A `note` event's message: its coded message (run/notes.py; the CLI's language is English, so the message is
    rendered in English, as the page renders it in the page's), else the trainer's English line."""
    said = run_messages.from_event(note.get("msg"))
    return str(said) if said is not None else str(note.get("text", ""))


def note_line(note: dict) -> str:
    """A `note` event as the terminal says it: `warning: ...` or `note: ...`."""
    return f"{'warning' if note.get('level') == 'warning' else 'note'}: {note_text(note)}"


def _new_notes(state: events.RunState, said: int, skip: set[str]) -> list[str]:
    """The notes the run's events hold beyond the first `said` (RunState keeps each note once, however often the
    trainer logged it), as lines, but those whose text is in `skip` (said before the run)."""
    return [note_line(n) for n in state.notes[said:] if note_text(n) not in skip]


def _wait_then_escalate(run: RunProcess) -> None:
    """After the STOP file: wait; then SIGTERM to every process group of the run (Windows: terminate every tree);
    then kill."""
    import subprocess

    from loratrainer.launch import processes

    try:
        run.wait(timeout=processes.STOP_GRACE_S)
        return
    except subprocess.TimeoutExpired:
        pass
    processes.signal_all(run.run_dir, signal.SIGTERM)  # Windows: every process tree of the run is terminated
    try:
        run.wait(timeout=processes.TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        run.kill()
        run.wait()


def _say_rank(run: RunProcess, stream: TextIO) -> bool:
    """A machine other than rank 0 shows no progress (rank 0 writes the events): say so instead of nothing.
    True on such a machine."""
    try:
        la = events_config(run).launch
    except Exception:  # noqa: BLE001  (the config is ours and was just written; say nothing rather than fail)
        return False
    if la.num_machines > 1 and la.machine_rank != 0:
        stream.write(f"this is machine rank {la.machine_rank} of {la.num_machines}: the machine of rank 0 "
                     f"({la.main_process_ip}) writes the LoRA files, samples and progress; this ends when that run ends\n")
        stream.flush()
        return True
    return False


def events_config(run: RunProcess):
    from loratrainer.config import load_config

    return load_config(run.run_dir / run_files.CONFIG_FILE)


@contextmanager
def _signals_as_keyboard_interrupt() -> Iterator[None]:
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    # SIGHUP (the terminal closed) exists on POSIX only; Windows delivers Ctrl-C as SIGINT and ends the console's
    # programs on close
    signums = [signal.SIGTERM]
    if sys.platform != "win32":
        signums.append(signal.SIGHUP)
    old = {signum: signal.signal(signum, interrupt) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


# Ends whose `ended` reason is the whole story: the sentence and the log's path, never the log's traceback
# (a full disk printed "disk full: disk full: PATH" and then a Python traceback under "last lines of the log").
_SAID_IN_FULL = ("stopped", "disk_full", "nan", "oom")


def _report_end(run: RunProcess, state: events.RunState, code: int, stream: TextIO) -> None:
    if stopped_before_training(state):
        stream.write(str(Msg.of("run.stopped_before_training")) + "\n")
    elif state.done:
        stream.write(end_line(state) + "\n")
        if state.status == "oom" and state.reason and run_messages.from_event(state.msg) is not None:
            # the coded reason says where it happened; the trainer's English reason is its advice for this config
            # (which settings to lower or turn on), as the page's status sentence gives its own
            stream.write(f"  {state.reason}\n")
    else:
        stream.write(f"the training process ended without a result: {events.describe_exit(code)}\n")
        code = code or events.EXIT_CODES["error"]
    for path in state.last_files[-3:]:
        stream.write(f"  saved {path}\n")
    lowest = events.lowest_validation(state.validation_history)
    if lowest:
        stream.write(f"  lowest validation loss {lowest[2]:.4f} at step {lowest[0]} (epoch {lowest[1]})\n")
    log_file = run.run_dir / run_files.LOG_FILE
    if code != 0 and state.done and state.status in _SAID_IN_FULL:
        stream.write(f"log: {log_file if log_file.exists() else run.run_dir / CONSOLE_FILE}\n")
    elif code != 0:
        tail = _tail(log_file) or _tail(run.run_dir / CONSOLE_FILE)
        if tail:
            stream.write("last lines of the log:\n" + tail)
    stream.write(f"run folder: {run.run_dir}\n")


def end_line(state: events.RunState) -> str:
    """How the run ended, in one line: the headline ("out of memory") and the `ended` event's coded reason
    (run/outcomes.py) in English, the page's sentence in the CLI's language; a trainer older than coded reasons (or a
    code this process does not know): its English reason, said once where it starts with the headline."""
    head = events.headline(state)
    said = run_messages.from_event(state.msg)
    reason = str(said) if said is not None else state.reason
    if said is None and reason.lower().startswith(head.lower()):  # "disk full: PATH": say it once
        return reason
    return f"{head}{': ' + reason if reason else ''}"


def validation_line(e: dict) -> str:
    return f"validation loss {e['loss']:.4f} at step {e['step']} (epoch {e['epoch']}, {e.get('images', '?')} images)"


def _tail(path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"  {line}\n" for line in text)


class _Bar:
    def __init__(self, stream: TextIO, skip: set[str] | None = None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.stream = stream
        self.bar = None
        self._shown = 0  # the width of the phase line shown before the bar
        self._notes = 0  # the run's notes said so far
        self._skip = skip or set()  # notes said before the run

    def update(self, state: events.RunState, new: list[dict]) -> None:
        for line in _new_notes(state, self._notes, self._skip):
            self._say(line)
        self._notes = len(state.notes)
        phase = phase_message(state)
        if self.bar is None and not state.total_steps:  # loading, caching: one line rewritten in place
            if phase is not None:
                text = str(phase)
                self.stream.write("\r" + text + " " * max(0, self._shown - len(text)))
                self.stream.flush()
                self._shown = len(text)
            return
        if state.total_steps and self.bar is None:
            if self._shown:
                self.stream.write("\n")
            self.bar = self._tqdm(total=state.total_steps, unit="step", file=self.stream, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.n = state.step
            if state.loss is not None:
                self.bar.set_postfix(epoch=f"{state.epoch}/{state.epochs}", loss=f"{state.avg_loss:.4f}", lr=f"{state.lr:.2e}", refresh=False)
            self.bar.refresh()
        for e in new:
            if e["event"] == "checkpoint":
                (self.bar.write if self.bar else self.stream.write)(f"saved {e['path']}")
            elif e["event"] == "validation":
                (self.bar.write if self.bar else self.stream.write)(validation_line(e))

    def _say(self, line: str) -> None:
        """A line above the bar, or over the phase line rewritten in place before it (which the next poll shows again)."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            return
        self.stream.write("\r" + line + " " * max(0, self._shown - len(line)) + "\n")
        self.stream.flush()
        self._shown = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Lines:
    PHASE_EVERY_S = 5.0  # a log of plain lines: a counted phase at most every 5 s, plus its first and last line

    def __init__(self, stream: TextIO, skip: set[str] | None = None):
        self.stream = stream
        self._phase_said = ("", 0.0)
        self._notes = 0  # the run's notes said so far
        self._skip = skip or set()  # notes said before the run

    def update(self, state: events.RunState, new: list[dict]) -> None:
        fresh = {id(n) for n in state.notes[self._notes:]}  # the notes kept from `new` (a repeated one is not)
        self._notes = len(state.notes)
        for e in new:
            if id(e) in fresh:  # in the order the run wrote it, between its steps
                if note_text(e) not in self._skip:
                    self.stream.write(note_line(e) + "\n")
            elif e["event"] == "phase" and e.get("phase") not in ("training", None):
                self._say_phase(e)
            elif e["event"] == "started":
                self.stream.write(f"started: {e.get('total_steps')} steps, {e.get('epochs')} epochs, seed {e.get('seed')}\n")
            elif e["event"] == "progress":
                self.stream.write(f"step {e['step']}/{e['total_steps']} epoch {e['epoch']}/{e['epochs']} loss {e['loss']:.4f} lr {e['lr']:.3g}\n")
            elif e["event"] == "checkpoint":
                self.stream.write(f"saved {e['path']}\n")
            elif e["event"] == "validation":
                self.stream.write(validation_line(e) + "\n")
        self.stream.flush()

    def _say_phase(self, e: dict) -> None:
        phase, now = str(e["phase"]), time.monotonic()
        edge = e.get("done") in (None, 0) or e.get("done") == e.get("total") or phase != self._phase_said[0]
        if not edge and now - self._phase_said[1] < self.PHASE_EVERY_S:
            return
        text = phase_message(events.summarize([e], events.RunState()))
        if text is not None:
            self._phase_said = (phase, now)
            self.stream.write(f"{text}\n")

    def close(self) -> None:
        pass
