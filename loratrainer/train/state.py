"""Saved training states (saving.save_state) and resuming from one (saving.resume).

A state folder holds what continuing needs and nothing of the frozen base model: the LoRA weights as
trained (peft names, full precision), the optimizer and scheduler states, the step, epoch and seed, and
each process's random-number states. Resuming restores them all, skips the batches already trained in the
interrupted epoch (the batch order is a function of seed and epoch), and continues step numbers, the
learning-rate schedule and file names. A missing or broken folder is an error, never a silent fresh start.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from loratrainer.errors import UserError
from loratrainer.messages import Msg
from loratrainer.run import outcomes as _outcomes  # noqa: F401  the codes of the refusals below (run/outcomes.py defines them torch-free)
from loratrainer.files import atomic_write
from loratrainer.run.files import OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, rng_file_name


@dataclass(frozen=True)
class StateInfo:
    step: int
    epoch: int
    seed: int
    total_steps: int
    steps_per_epoch: int
    output_name: str


class BrokenState(UserError):
    pass


def _trained_params(t) -> dict[str, torch.nn.Parameter]:
    """The LoRA weights being trained, by the names a state file keeps them under."""
    models = [("unet", t.handle.unet)] + [(name, getattr(t.components, name)) for name in t.family.text_encoders]
    return {f"{part}.{name}": p for part, model in models for name, p in model.named_parameters() if p.requires_grad}


def _lora_state(t) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in _trained_params(t).items()}


def save_state(t, folder: Path) -> None:
    """Main process: weights, optimizer, schedule, counters. Every process: its own RNG states."""
    folder.mkdir(parents=True, exist_ok=True)
    rank = t.accelerator.process_index
    torch.save(_rng_states(), folder / rng_file_name(rank))
    if not t.accelerator.is_main_process:
        return
    torch.save(_lora_state(t), folder / WEIGHTS_FILE)
    torch.save({"optimizer": t.optimizer.state_dict(), "scheduler": t.lr_scheduler.state_dict()}, folder / OPTIMIZER_FILE)
    info = StateInfo(t.step, t.epoch, t.seed, t.total_steps, t.report.steps.steps_per_epoch, t.config.folders.output_name)
    atomic_write(folder / STATE_FILE, json.dumps(asdict(info), indent=2) + "\n")  # written last: marks the folder complete


def read_state_info(folder: str | Path) -> StateInfo:
    folder = Path(folder)
    try:
        return StateInfo(**json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise BrokenState(Msg.of("state.not_a_state", folder=str(folder), file=STATE_FILE)) from None
    except (ValueError, TypeError) as exc:
        raise BrokenState(Msg.of("state.damaged", path=str(folder / STATE_FILE), detail=str(exc))) from None


def load_state(t, folder: str | Path) -> StateInfo:
    """Restore a state into the freshly built trainer; returns what was restored."""
    folder = Path(folder)
    info = read_state_info(folder)
    if info.steps_per_epoch != t.report.steps.steps_per_epoch:
        raise BrokenState(Msg.of("state.steps_changed", saved=info.steps_per_epoch, now=t.report.steps.steps_per_epoch))
    try:
        weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu")
        opt = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
        rng_file = folder / rng_file_name(t.accelerator.process_index)
        rng = torch.load(rng_file if rng_file.exists() else folder / rng_file_name(0), weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise BrokenState(Msg.of("state.incomplete", folder=str(folder), detail=str(exc))) from None
    params = _trained_params(t)
    # same names and shapes (a changed rank, LoKr factor or Tucker setting keeps LyCORIS's names, not the shapes)
    if set(params) != set(weights) or any(p.shape != weights[n].shape for n, p in params.items()):
        raise BrokenState(Msg.of("state.other_network"))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    t.optimizer.load_state_dict(opt["optimizer"])
    t.lr_scheduler.load_state_dict(opt["scheduler"])
    _set_rng_states(rng)
    t.step, t.epoch = info.step, info.epoch
    return info


def _rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_states(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.random.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
