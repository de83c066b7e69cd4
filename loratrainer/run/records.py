"""A run's process records: each process of a run writes `<run folder>/processes/<role>-<rank>.json` (pid, process
group, start time, host), so the launcher can find every one of them again, and a pid the system gave to another
program since is not taken for ours. The launcher writes its own record (`record_launcher`), each trainer worker
writes its own first thing (`record_this_worker`). No torch here."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from loratrainer.files import atomic_write
from loratrainer.machine import child_processes
from loratrainer.run.files import PROCESSES_DIR, launcher_record_name, worker_record_name


@dataclass(frozen=True)
class ProcessRecord:
    role: str  # "launcher" (accelerate launch) or "worker" (the trainer)
    pid: int
    pgid: int  # the process group (POSIX); the pid itself on Windows
    start: float | None  # child_processes.start_time: seconds since boot (Linux) or the epoch (elsewhere)
    host: str
    rank: int = 0  # global rank of a worker; the machine rank of a launcher
    local_rank: int = 0
    machine_rank: int = 0


def start_ticks(pid: int) -> float | None:
    """The process's start time as recorded (`child_processes.start_time`; the name is kept from when it was
    read from /proc in clock ticks). Records written that way (an int) are compared by pid alone."""
    return child_processes.start_time(pid)


def _record(run_dir: Path, name: str, record: ProcessRecord) -> None:
    atomic_write(Path(run_dir) / PROCESSES_DIR / name, json.dumps(asdict(record), indent=1) + "\n")


def record_launcher(run_dir: str | Path, pid: int, machine_rank: int = 0) -> None:
    _record(Path(run_dir), launcher_record_name(machine_rank),
            ProcessRecord("launcher", pid, child_processes.process_group(pid), start_ticks(pid), socket.gethostname(),
                          machine_rank, 0, machine_rank))


def record_this_worker(run_dir: str | Path) -> ProcessRecord:
    """Called by the trainer first thing; torchrun sets RANK/LOCAL_RANK/GROUP_RANK (absent: one process)."""
    env = os.environ
    pid = os.getpid()
    record = ProcessRecord("worker", pid, child_processes.process_group(pid), start_ticks(pid), socket.gethostname(),
                           int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("GROUP_RANK", 0)))
    _record(Path(run_dir), worker_record_name(record.rank), record)
    return record


def read_records(run_dir: str | Path) -> list[ProcessRecord]:
    out = []
    for path in sorted((Path(run_dir) / PROCESSES_DIR).glob("*.json")):
        try:
            out.append(ProcessRecord(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue  # half a record cannot be: they are written atomically; a foreign file is not ours
    return out


def is_alive(record: ProcessRecord) -> bool:
    """The recorded process still runs (not a zombie) and is the same process (same start time)."""
    if record.host != socket.gethostname():
        return False  # another machine's worker: its own launcher stops it
    # an int is a start in clock ticks from /proc (a record written before child_processes): pid alone
    start = record.start if isinstance(record.start, float) else None
    return child_processes.alive(record.pid, start)
