"""Every child process the product starts, found and stopped in one place, on every OS (psutil, no /proc parsing).

Training runs (launch/start.py), the queue runner (launch/queue_runner.py), the epoch x weight grid
(compare/process.py), the LoRA tools and TensorBoard started by the GUI (gui/tab_lora_tools.py, gui/external_programs.py) and
the trainer's own test faults (train/faults.py) all start, find and end their processes through this module, so the
difference between the systems lives here only:

- start: a session of its own on POSIX (a signal to the child's process group reaches its children, never us); a
  new process group on Windows (CREATE_NEW_PROCESS_GROUP: a Ctrl-C in the GUI's console does not reach it).
- find: a process is ours only if its pid AND its start time match (`start_time`), so a pid the system gave to
  another program since is never taken for ours (Windows reuses pids within seconds).
- stop: POSIX signals the process group (as `kill -TERM -PGID` would) and then each process of the tree
  (a child that left the group); Windows has no process groups to signal, so the whole tree (psutil's children,
  walked before the parent dies) is terminated, then killed. The STOP file before either is the caller's (a run).

No torch here: the GUI and the CLI import it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import psutil

# psutil's create_time is the boot time plus the process's start in clock ticks on Linux; the boot time is read
# again every call and moves when the wall clock is stepped (NTP), so on Linux the start is kept relative to boot
# (exact to the tick). Elsewhere create_time is an absolute, fixed stamp. Either way two reads of one process differ
# by float rounding only.
_SAME_START_S = 0.005
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def session_kwargs() -> dict[str, Any]:
    """subprocess.Popen arguments that put the child in a session (POSIX) or process group (Windows) of its own."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def start(argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start `argv` (an argument list, never a shell line) in a session/process group of its own."""
    if popen_kwargs.get("shell"):
        raise ValueError("child processes are started from argument lists, never through a shell")
    return subprocess.Popen(argv, **popen_kwargs, **session_kwargs())


# -- finding ---------------------------------------------------------------------------------------------------


def start_time(pid: int) -> float | None:
    """When the process started (seconds since boot on Linux, since the epoch elsewhere); None when it is gone or
    cannot be read. Compare two with `same_start`."""
    try:
        created = psutil.Process(pid).create_time()
        if sys.platform.startswith("linux"):
            return round(created - psutil.boot_time(), 3)
        return created
    except (psutil.Error, OSError):
        return None


def same_start(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) < _SAME_START_S


def alive(pid: int, start: float | None = None) -> bool:
    """The process runs (not a zombie) and, when `start` is given, is the process that started then."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() in _GONE:
            return False
    except (psutil.Error, OSError):
        return False
    return start is None or same_start(start_time(pid), start)


def process_group(pid: int) -> int:
    """The process group of `pid` (POSIX; on Windows the pid itself: there are no groups to signal)."""
    if sys.platform == "win32":
        return pid
    return os.getpgid(pid)


def own_group() -> int | None:
    if sys.platform == "win32":
        return None
    return os.getpgid(0)


def find(match: Callable[[list[str]], bool]) -> list[int]:
    """Live processes (never this one) whose argument list `match` accepts."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):  # the status only of a match: half the reads per process
        try:
            argv = proc.info["cmdline"]
            if proc.pid == os.getpid() or not argv or not match(list(argv)):
                continue
            if proc.status() not in _GONE:
                found.append(proc.pid)
        except (psutil.Error, OSError, TypeError):
            continue
    return found


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a POSIX process group (an orphan's zombie may never be reaped in a
    container); on Windows, the process `pgid` itself when it lives (a group there is its leader's tree)."""
    if sys.platform == "win32":
        return [pgid] if alive(pgid) else []
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] not in _GONE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return members


def tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes `pids` and all their descendants (parents first), live ones only."""
    out: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
        except (psutil.Error, OSError):
            continue
        for p in family:
            out.setdefault(p.pid, p)
    return list(out.values())


# -- stopping --------------------------------------------------------------------------------------------------


def terminate(pids: Iterable[int], groups: Iterable[int] = ()) -> list[int]:
    """Ask politely: SIGTERM to each process group and each process of the trees (POSIX); Windows has no such
    signal for a program without a console window, so there it is TerminateProcess on the whole tree. Never our
    own group or process. Returns the pids that were signalled."""
    return _signal(pids, groups, hard=False)


def kill(pids: Iterable[int], groups: Iterable[int] = ()) -> list[int]:
    """SIGKILL (POSIX) / TerminateProcess (Windows) to the groups and every process of the trees."""
    return _signal(pids, groups, hard=True)


def _signal(pids: Iterable[int], groups: Iterable[int], hard: bool) -> list[int]:
    pids = list(pids)
    family = tree(pids)  # walked before anything dies: an orphan's parent link is lost on Windows
    if sys.platform != "win32":
        import signal

        own = os.getpgid(0)
        signum = signal.SIGKILL if hard else signal.SIGTERM
        for pgid in set(groups):
            if pgid > 1 and pgid != own:
                try:
                    os.killpg(pgid, signum)
                except (ProcessLookupError, PermissionError):
                    pass
    hit = []
    for proc in family:
        if proc.pid == os.getpid():
            continue
        try:
            proc.kill() if hard else proc.terminate()
            hit.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return hit


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    """Wait until none of `pids` (and, on POSIX, none of their group members) lives; False on timeout."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except (psutil.Error, OSError):
            continue
    deadline = time.monotonic() + timeout
    while True:
        live = [p for p in procs if _lives(p)]
        if not live:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _lives(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() not in _GONE
    except (psutil.Error, OSError):
        return False


def stop(popen: subprocess.Popen, term_grace_s: float = 10.0) -> str:
    """End a child started by `start` and everything it started: terminate the tree (and its POSIX group), wait
    `term_grace_s`, then kill what is left. Reaps the child. Returns "not running", "terminated" or "killed"."""
    if popen.poll() is not None and not _descendants_left(popen.pid):
        return "not running"
    family = [p.pid for p in tree([popen.pid])]
    terminate(family, _groups_of(popen.pid))
    try:
        popen.wait(timeout=term_grace_s)
        if wait_gone(family, timeout=max(0.5, term_grace_s / 4)):
            return "terminated"
    except subprocess.TimeoutExpired:
        pass
    kill(family, _groups_of(popen.pid))
    popen.wait()
    wait_gone(family, timeout=5)
    return "killed"


def _groups_of(pid: int) -> list[int]:
    # a child started by `start` leads its own group (POSIX): pgid == pid, even after the leader exited
    return [] if sys.platform == "win32" else [pid]


def _descendants_left(pid: int) -> bool:
    return bool(group_members(pid)) if sys.platform != "win32" else False


def kill_self() -> NoReturn:
    """End this process at once, as the OOM killer or Task Manager would (no cleanup, no exit handlers)."""
    psutil.Process(os.getpid()).kill()
    time.sleep(10)  # SIGKILL is delivered before this returns; TerminateProcess on Windows too
    os._exit(137)
