"""Every name a run writes, in one place: its run folder and what is in it, and the LoRA files, training states
and sample images it writes to output_dir (docs/architecture.md, "A run folder").

The launcher creates the run folder and reads it back; the trainer writes into it and into output_dir by these
names; the GUI, the CLI and `loratrainer compare` find a run's files by them. A leaf: standard library only, no
torch, so every side may import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# -- the run folder: <logging_dir or output_dir/log>/<output_name>_<YYYYmmdd-HHMMSS>[-N]/ ----------------------

CONFIG_FILE = "config.json"  # the resolved config; the trainer reads only this
COMMAND_FILE = "command.json"  # the argv that was started
CONSOLE_FILE = "console.log"  # stdout/stderr of accelerate and the trainer (what train.log cannot catch)
EVENTS_FILE = "events.jsonl"
LOG_FILE = "train.log"
VERSIONS_FILE = "versions.json"
TENSORBOARD_DIR = "tensorboard"
STOP_FILE = "STOP"  # its appearance asks the trainer to save <name>-interrupted and stop
STOP_NOW_FILE = "STOP_NOW"  # the page's Stop now wrote it before killing the run: "ended without saving", not "killed"
PROCESSES_DIR = "processes"  # launcher-m<machine rank>.json, rank-<global rank>.json
RUN_STAMP = "%Y%m%d-%H%M%S"  # the run folder's time stamp (datetime.strftime)


def logging_root(config: Any) -> Path:
    """The folder that holds the run folders: logging_dir, or output_dir/log."""
    f = config.folders
    return Path(f.logging_dir) if f.logging_dir else Path(f.output_dir or ".") / "log"


def run_folder(config: Any, stamp: str) -> Path:
    """`<logging root>/<output_name>_<stamp>` (launch.start.create_run adds `-2`, `-3`, ... when it is taken)."""
    return logging_root(config) / f"{config.folders.output_name}_{stamp}"


def launcher_record_name(machine_rank: int) -> str:
    return f"launcher-m{machine_rank}.json"


def worker_record_name(rank: int) -> str:
    return f"rank-{rank}.json"


def batches_trace_name(rank: int) -> str:
    """LORATRAINER_TRACE_BATCHES=1: the images of every batch the worker of this rank trained (tests only)."""
    return f"batches-rank-{rank}.jsonl"


def stop_requested(run_dir: str | Path) -> bool:
    return os.path.exists(Path(run_dir) / STOP_FILE)


# -- output_dir: LoRA files (Kohya's names), their training states, sample images ----------------------------


def checkpoint_name(output_name: str, kind: str, p: Any) -> str:
    """`<name>-000001` per epoch, `<name>-step00000500` per step, `<name>` at the end, `<name>-interrupted` on
    stop (p: the train.checkpoints.Progress, its epoch and step)."""
    if kind == "epoch":
        return f"{output_name}-{p.epoch:06d}.safetensors"
    if kind == "step":
        return f"{output_name}-step{p.step:08d}.safetensors"
    if kind == "interrupted":
        return f"{output_name}-interrupted.safetensors"
    return f"{output_name}.safetensors"


def interrupted_name(output_name: str, n: int) -> str:
    """Stopped again after a resume: `<name>-interrupted-2`, `-3`, ..."""
    return f"{output_name}-interrupted-{n}.safetensors"


# A saved training state (train.state) is a folder beside its LoRA file; the launcher's resume check, the
# trainer's save and load and the rotation of old files use these names.
STATE_FILE = "train_state.json"  # written last: marks the folder complete
WEIGHTS_FILE = "lora_weights.pt"
OPTIMIZER_FILE = "optimizer.pt"


def state_folder_name(lora_file: Path) -> Path:
    """Kohya's naming: `<file stem>-state` beside the LoRA file."""
    return lora_file.with_name(lora_file.stem + "-state")


def rng_file_name(rank: int) -> str:
    return f"rng_{rank}.pt"


SAMPLE_DIR = "sample"  # in output_dir, as in Kohya


def sample_name(output_name: str, step: int, epoch: int, index: int, stamp: str, seed: int, by_epoch: bool) -> str:
    """Kohya's `<output_name>_<e000001 | 000500>_<index:02d>_<YYYYmmddHHMMSS>_<seed>.png`."""
    number = f"e{epoch:06d}" if by_epoch else f"{step:06d}"
    return f"{output_name}_{number}_{index:02d}_{stamp}_{seed}.png"
