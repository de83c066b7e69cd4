"""Test-only fault injection (docs/reliability.md), e.g. LORATRAINER_FAULT="nan@3,disk_full@save2":
honoured only in the test harness's explicit test mode (LORATRAINER_TEST_MODE=1, which tests/conftest.py sets),
so a LORATRAINER_FAULT left in a user's shell cannot break a real run. nan@N makes the loss of step N NaN; oom@N raises out-of-memory at step N (oom@sample: while rendering the
first sample image); disk_full@saveN fails the N-th LoRA save with ENOSPC inside its atomic write, as a full
disk would; kill@saveN (kill@save = the first) SIGKILLs the trainer inside the N-th save, after the data was
written to the temporary file and before it is in place; stop@N asks for a stop so that step N is the last."""

from __future__ import annotations

import errno
import logging
import os
from contextlib import contextmanager
from typing import Iterator

import torch

from loratrainer.machine import child_processes


FAULT_ENV = "LORATRAINER_FAULT"
TEST_MODE_ENV = "LORATRAINER_TEST_MODE"
_warned: list[str] = []


def _spec() -> str:
    spec = os.environ.get(FAULT_ENV, "")
    if spec and os.environ.get(TEST_MODE_ENV) != "1":
        if spec not in _warned:  # say once why nothing happens, instead of failing a user's run on purpose
            _warned.append(spec)
            logging.getLogger("loratrainer.train").warning("%s is ignored outside the test suite's test mode", FAULT_ENV)
        return ""
    return spec


def _fault(kind: str) -> int | str | None:
    spec = _spec()
    for item in spec.split(","):
        name, _, raw = item.strip().partition("@")
        if name != kind:
            continue
        at = raw.removeprefix("save") or ("1" if raw == "save" else "")
        return int(at) if at.isdigit() else at or None
    return None


def inject_fault(kind: str, step: int, value: torch.Tensor) -> torch.Tensor:
    return value * float("nan") if _fault(kind) == step else value


def fail_step(step: int) -> None:
    if _fault("oom") == step:
        raise torch.OutOfMemoryError("CUDA out of memory (injected by LORATRAINER_FAULT)")


def fail_sampling() -> None:
    if _fault("oom") == "sample":
        raise torch.OutOfMemoryError("CUDA out of memory (injected by LORATRAINER_FAULT while sampling)")


def stop_after(step: int) -> bool:
    """stop@N: True after step N-1, so the STOP request is seen at step N (the step that checks it still trains)."""
    at = _fault("stop")
    return isinstance(at, int) and step == at - 1


@contextmanager
def during_save(save_number: int, path) -> Iterator[None]:
    """Around the N-th LoRA save: fail or kill at the fsync of its temporary file (the data is written, the
    file not yet in place), where a real full disk or a kill would hurt most."""
    disk_full, kill = _fault("disk_full") == save_number, _fault("kill") == save_number
    if not (disk_full or kill):
        yield
        return
    real_fsync = os.fsync

    def fsync(fd: object) -> None:  # os.fsync takes a descriptor or anything with fileno()
        if kill:
            child_processes.kill_self()
        raise OSError(errno.ENOSPC, "No space left on device (injected by LORATRAINER_FAULT)", str(path))

    os.fsync = fsync
    try:
        yield
    finally:
        os.fsync = real_fsync
