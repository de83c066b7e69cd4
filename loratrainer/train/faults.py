"""The test suite's one seam into a real trainer process (docs/testing.md "Test-only switches"), e.g.
LORATRAINER_FAULT="nan@3,disk_full@save2": honoured only in the test harness's explicit test mode
(LORATRAINER_TEST_MODE=1, which tests/conftest.py sets), so a LORATRAINER_FAULT left in a user's shell cannot break
a real run. nan@N makes the loss of step N NaN; oom@N raises out-of-memory at step N (oom@sample: while rendering the
first sample image); disk_full@saveN fails the N-th LoRA save with ENOSPC inside its atomic write, as a full
disk would; kill@saveN (kill@save = the first) SIGKILLs the trainer inside the N-th save, after the data was
written to the temporary file and before it is in place; stop@N asks for a stop so that step N is the last.
LORATRAINER_TRACE_BATCHES=1 makes each process list the images of every batch it trains (batches-rank-N.jsonl).

The trainer enters this module at one point, `install(t, reporter)` in train/entry.py, before the loop starts;
outside test mode (or with neither variable set) it returns the reporter and changes nothing. In test mode it
wraps, once per process, the loop's `training_step` and `agree_across_processes`, sampling's `render` and
saving's `save_lora` (module attributes, looked up at each call), so the loop itself carries no test code."""

from __future__ import annotations

import errno
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from loratrainer.machine import child_processes
from loratrainer.run import files as run_files


FAULT_ENV = "LORATRAINER_FAULT"
TRACE_ENV = "LORATRAINER_TRACE_BATCHES"
TEST_MODE_ENV = "LORATRAINER_TEST_MODE"
_warned: list[str] = []
_saves = [0]  # LoRA saves of this run so far (disk_full@saveN / kill@saveN count them); install() resets it


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


def install(t, reporter):
    """The seam's one entry (train/entry.py, before the loop): the reporter the loop should use. Nothing is
    changed outside test mode or when neither LORATRAINER_FAULT nor LORATRAINER_TRACE_BATCHES is set."""
    trace = bool(os.environ.get(TRACE_ENV))
    if os.environ.get(TEST_MODE_ENV) != "1":
        _spec()  # logs that a stray LORATRAINER_FAULT is ignored
        if trace and TRACE_ENV not in _warned:
            _warned.append(TRACE_ENV)
            logging.getLogger("loratrainer.train").warning("%s is ignored outside the test suite's test mode", TRACE_ENV)
        return reporter
    if not (_spec() or trace):
        return reporter
    _wrap_product_functions()
    _saves[0] = 0
    if trace:
        t.loader = _TracedLoader(t.loader, t.sampler, Path(t.run_dir) / run_files.batches_trace_name(t.accelerator.process_index))
    _stop_after(t, t.step)  # stop@1: the STOP file before the first step
    return _StopAfter(reporter, t)


def _wrap_product_functions() -> None:
    """Each wrapper reads LORATRAINER_FAULT at every call, so wrapping once per process serves every run in it
    (the suite's in-process runs too); a function already wrapped is left alone."""
    from loratrainer.train import loop, sampling, saving

    def training_step(real):
        def step(t, group):
            fail_step(t.step + 1)  # oom@N: before step N's first micro-batch
            return real(t, group)
        return step

    def agree_across_processes(real):
        def agree(t, loss):
            return real(t, inject_fault("nan", t.step, loss))  # nan@N: step N's loss, before the loop's NaN guard
        return agree

    def render(real):
        def render_one(*args, **kwargs):
            fail_sampling()  # oom@sample: before the first image is rendered
            return real(*args, **kwargs)
        return render_one

    def save_lora(real):
        def save(path, *args, **kwargs):
            _saves[0] += 1
            with during_save(_saves[0], path):  # disk_full@saveN / kill@saveN
                return real(path, *args, **kwargs)
        return save

    for module, name, wrap in ((loop, "training_step", training_step), (loop, "agree_across_processes", agree_across_processes),
                               (sampling, "render", render), (saving, "save_lora", save_lora)):
        real = getattr(module, name)  # AttributeError: the trainer renamed a function this seam wraps
        if not getattr(real, "_fault_seam", False):
            wrapped = wrap(real)
            wrapped._fault_seam = True
            setattr(module, name, wrapped)


def _stop_after(t, step: int) -> None:
    """stop@N: the STOP file after step N-1 (or at the start), so step N is the last."""
    if stop_after(step) and t.accelerator.is_main_process:
        (Path(t.run_dir) / run_files.STOP_FILE).write_text("LORATRAINER_FAULT\n")


class _StopAfter:
    """The reporter, and stop@N after each step."""

    def __init__(self, reporter, t):
        self.reporter, self.t = reporter, t

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self.reporter.step(step, epoch, loss, lr)
        _stop_after(self.t, step)

    def epoch_end(self, epoch: int, step: int) -> None:
        self.reporter.epoch_end(epoch, step)


class _TracedLoader:
    """The trainer's data loader, listing each batch's images as the loop takes it. The loader's batches are the
    sampler's (its batch_sampler), which yields the same keys however often it is iterated within an epoch."""

    def __init__(self, loader, sampler, path: Path):
        self.loader, self.sampler, self.path = loader, sampler, path

    def __iter__(self):
        for keys, batch in zip(iter(self.sampler), self.loader):
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"epoch": keys[0][1], "images": [str(self.sampler.samples[k[0]].image_path) for k in keys]}) + "\n")
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)
