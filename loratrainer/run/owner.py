"""The process a run belongs to: `loratrainer train` or `loratrainer queue run` mark themselves in the environment
the trainer inherits, and the trainer (train/launcher_watch.py) stops as on Stop when that process is gone.

After `kill -9` of `loratrainer train` or of the queue runner, accelerate and the trainer live on in their own
session: the run trained and saved for hours with nobody to stop it, and the queue let a second run start beside
it. The mark is `pid:start:host` (start: run/records.start_ticks, psutil's start time as a float), so a pid
reused by another program is never taken for the owner. The GUI marks nothing: its runs outlive a GUI restart
(docs/reliability.md rule 6). No torch.
"""

from __future__ import annotations

import os
import socket

from loratrainer.run.records import ProcessRecord, start_ticks

OWNER_ENV = "LORATRAINER_OWNER"


def own_runs_started_here() -> None:
    """Runs started from now on by this process stop when this process is gone (the mark is inherited)."""
    pid = os.getpid()
    os.environ[OWNER_ENV] = f"{pid}:{start_ticks(pid) if start_ticks(pid) is not None else ''}:{socket.gethostname()}"


def owner_record(value: str | None) -> ProcessRecord | None:
    """The owner named by an OWNER_ENV value; None when there is none or it is not ours."""
    if not value:
        return None
    pid, _, rest = value.partition(":")
    start, _, host = rest.partition(":")
    try:  # the start time is a float since the process helper moved to psutil (machine/child_processes.py)
        started = float(start) if start else None
    except ValueError:
        return None
    if not pid.isdigit():
        return None
    return ProcessRecord("launcher", int(pid), 0, started, host or socket.gethostname())
