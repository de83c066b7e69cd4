"""The processes of a run: recorded in its run folder, found again, stopped without leaving any behind.

`accelerate launch` with several processes runs torchrun, which starts every worker in a session of its own: a
signal to accelerate's process group does not reach them, and when accelerate itself is killed they train on as
orphans. So every process of a run is recorded in `<run folder>/processes/` (the launcher by `start_run`, each
worker by itself as its first act) with its pid, process group and start time (a pid the system gave to another
program since is not taken for ours), and the process table is also searched for command lines naming the run
folder (a worker killed before it could write its record). Stopping goes STOP file -> SIGTERM -> SIGKILL, each to
every process group found (Windows: STOP file -> terminate every process tree -> kill). Finding and signalling
go through machine/child_processes.py (psutil), the same on every OS. No torch here: the GUI and the CLI import this.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from loratrainer.machine import child_processes
from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.files import atomic_write
from loratrainer.run.files import PROCESSES_DIR
from loratrainer.run.records import is_alive, read_records

ENTRY_MODULE = "loratrainer.train.entry"
STOP_GRACE_S = 60.0  # after the STOP file: time to save `<name>-interrupted` (and a state) before SIGTERM
TERM_GRACE_S = 15.0  # after SIGTERM: before SIGKILL
KILL = -9  # signal_all's "kill at once" (SIGKILL on POSIX, a name Windows lacks; TerminateProcess there)


def _names_run(run_dir: Path) -> Callable[[list[str]], bool]:
    target = str(run_dir)
    return lambda argv: ENTRY_MODULE in argv and _run_dir_arg(argv) == target


def _naming(run_dir: Path) -> list[int]:
    """Live processes whose command line is `... loratrainer.train.entry --run-dir <run_dir>` (launcher and workers,
    and the workers' forked data loaders, which share their command line)."""
    return child_processes.find(_names_run(run_dir))


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group (child_processes.group_members)."""
    return child_processes.group_members(pgid)


def _run_dir_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == "--run-dir":
            return argv[i + 1]
    return None


def live_processes(run_dir: str | Path) -> dict[int, int]:
    """{pid: process group} of every live process of the run on this machine: recorded ones, the members of their
    process groups (data loaders), and any process naming the run folder."""
    run_dir = Path(run_dir)
    pids: set[int] = set(_naming(run_dir))
    for record in read_records(run_dir):
        if is_alive(record):
            pids.add(record.pid)
        if record.host == socket.gethostname() and sys.platform != "win32":
            pids.update(group_members(record.pgid))
    pids.discard(os.getpid())
    out = {}
    for pid in pids:
        if child_processes.alive(pid):
            try:
                out[pid] = child_processes.process_group(pid)
            except OSError:
                continue  # gone in between
    return out


def alive(run_dir: str | Path) -> bool:
    return bool(live_processes(run_dir))


def signal_all(run_dir: str | Path, signum: int) -> list[int]:
    """Send `signum` to every process group of the run (and each process, in case it left its group); never to
    our own group. SIGTERM terminates and any other signal kills (child_processes: on Windows, TerminateProcess
    on every process tree of the run). Returns the pids that were alive."""
    live = live_processes(run_dir)
    # only groups led by a process of the run or recorded as the run's: never a shell's group a process joined
    ours = set(live) | {r.pgid for r in read_records(run_dir) if r.host == socket.gethostname()}
    groups = [g for g in set(live.values()) if g in ours]
    if signum == signal.SIGTERM:
        child_processes.terminate(live, groups)
    else:
        child_processes.kill(live, groups)
    return sorted(live)


def kill_all(run_dir: str | Path) -> list[int]:
    """Kill every process of the run, repeated until none is left (a worker may be starting right now)."""
    killed: list[int] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hit = signal_all(run_dir, KILL)
        if not hit:
            break
        killed += hit
        time.sleep(0.1)
    return sorted(set(killed))


def wait_gone(run_dir: str | Path, timeout: float, poll_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while alive(run_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def stop_all(run_dir: str | Path, stop_grace_s: float = STOP_GRACE_S, term_grace_s: float = TERM_GRACE_S) -> str:
    """STOP file, wait; terminate every process group (SIGTERM; Windows: every tree), wait; kill. Returns how it
    ended: "stopped", "terminated" or "killed" (or "not running")."""
    run_dir = Path(run_dir)
    if not alive(run_dir):
        return "not running"
    atomic_write(run_dir / run_files.STOP_FILE, f"stop requested at {events.now_iso()}\n")
    if wait_gone(run_dir, stop_grace_s):
        return "stopped"
    signal_all(run_dir, signal.SIGTERM)
    if wait_gone(run_dir, term_grace_s):
        return "terminated"
    kill_all(run_dir)
    return "killed"


# -- runs writing to an output folder ------------------------------------------------------------------------


def running_runs(output_dir: str | Path, machine_rank: int | None = None, logging_dir: str | Path | None = None) -> list[Path]:
    """Run folders with a live process whose config writes to `output_dir` (the same machine rank only, when
    given: the ranks of a multi-machine run on one computer share the output folder by design)."""
    target = _real(output_dir)
    candidates: set[Path] = set()
    for pid in child_processes.find(lambda argv: ENTRY_MODULE in argv and _run_dir_arg(argv) is not None):
        try:
            argv = psutil.Process(pid).cmdline()
        except (psutil.Error, OSError):
            continue
        if _run_dir_arg(argv):
            candidates.add(Path(str(_run_dir_arg(argv))))
    if logging_dir is not None:  # also the records of the runs in the usual run-folder root
        candidates.update(p.parent.parent for p in Path(logging_dir).glob(f"*/{PROCESSES_DIR}/*.json"))
    found = []
    for run_dir in sorted(candidates):
        try:
            config = json.loads((run_dir / run_files.CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _real(config.get("folders", {}).get("output_dir", "")) != target:
            continue
        if machine_rank is not None and int(config.get("launch", {}).get("machine_rank", 0)) != machine_rank:
            continue
        if alive(run_dir):
            found.append(run_dir)
    return found


def _real(path: str | Path) -> str:
    return os.path.realpath(str(path)) if str(path) else ""
