"""The epoch x weight grid as the GUI runs it: `python -m loratrainer compare ...` in a process (and session) of
its own, so a long render never blocks the page; progress from the JSON lines it appends to a file; Cancel ends
its whole process group. No torch here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loratrainer.machine import child_processes


@dataclass
class Render:
    target: Path
    progress_file: Path
    log_file: Path
    popen: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    def last(self) -> dict:
        try:
            lines = self.progress_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            try:
                return json.loads(line)
            except ValueError:
                continue
        return {}

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def error(self) -> str:
        """The last line the command printed to stderr: `error: ...` for a refusal, else the exception line."""
        try:
            lines = [line for line in self.log_file.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        for line in reversed(lines):
            if line.startswith("error: "):
                return line.removeprefix("error: ")
        return lines[-1] if lines else ""


class Renders:
    """At most one grid render at a time per GUI (it takes the GPU); thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current: Render | None = None

    def start(self, args: list[str], target: Path) -> Render:
        with self._lock:
            if self.current is not None and self.current.running:
                raise RuntimeError("busy")
            target.parent.mkdir(parents=True, exist_ok=True)
            progress = target.with_suffix(".progress.jsonl")
            log = target.with_suffix(".log")
            progress.unlink(missing_ok=True)
            argv = [sys.executable, "-m", "loratrainer", "compare", *args, "-o", str(target), "--progress", str(progress)]
            with open(log, "wb") as out:
                popen = child_processes.start(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self.current = Render(target, progress, log, popen)
            return self.current

    def cancel(self) -> bool:
        with self._lock:
            r = self.current
            if r is None or not r.running:
                return False
            r.cancelled = True
            child_processes.stop(r.popen, term_grace_s=10)  # its whole group/tree: terminate, then kill
            return True
