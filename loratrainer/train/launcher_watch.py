"""The trainer's watch on the process that started its run (run/owner.py): when `loratrainer train` or the
queue runner is gone (kill -9, a closed terminal that took it), the STOP file is written, so the run saves
`<name>-interrupted` and ends as on Stop. A poll every few seconds in a daemon thread: the step loop is not touched."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from loratrainer.messages import Msg
from loratrainer.run import files as run_files
from loratrainer.run import notes as _notes  # noqa: F401  the code of the warning below
from loratrainer.run.owner import OWNER_ENV, owner_record
from loratrainer.run.records import is_alive

log = logging.getLogger("loratrainer.train")
POLL_S = 2.0


def watch_owner(run_dir: Path, poll_s: float = POLL_S) -> threading.Thread | None:
    """Start the watch when the environment names an owner; returns the thread (None: nothing to watch)."""
    owner = owner_record(os.environ.get(OWNER_ENV))
    if owner is None:
        return None

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if not is_alive(owner):
                log.warning("%s", Msg.of("train.owner_gone", pid=owner.pid))
                try:
                    (Path(run_dir) / run_files.STOP_FILE).write_text(f"the launcher (pid {owner.pid}) is gone\n")
                except OSError:
                    pass
                return

    thread = threading.Thread(target=watch, name="owner-watch", daemon=True)
    thread.start()
    return thread
