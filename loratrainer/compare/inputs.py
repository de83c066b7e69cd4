"""What `loratrainer compare FILE_OR_RUN_DIR...` compares: LoRA files, each with a row label, and the settings of
the run that trained them (base model, VAE, clip skip, sampler, its first sample prompt). No torch."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loratrainer.run import files as run_files
from loratrainer.config.sample_prompts import MAX_SIZE
from loratrainer.compare.runs import SavedFile, epoch_label, read_run
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define
from loratrainer.model.safetensors_header import HeaderError, is_regular_file, read_header

if TYPE_CHECKING:
    from loratrainer.config import TrainingConfig

define({
    "compare.size_range": "{option} must be a multiple of 8 from 8 to {max} pixels, as a sample image's size (got {value}).",
    "compare.steps_range": "--steps must be from 1 to {max}, as a sample image's steps (got {value}).",
    "compare.not_finite": "{option}: {value} is not a finite number; give numbers such as 0,0.5,1.",
    "compare.cfg_range": "--cfg must be a finite number of 0 or more, such as 7 (got {value}).",
    "compare.lora_missing": "{path} does not exist.",
    "compare.lora_not_regular": "{path} is not a regular file (a pipe, a device or a socket); give a LoRA .safetensors file.",
    "compare.lora_unreadable": "{path} cannot be read as a LoRA file ({detail}).",
    "compare.not_run_folder": "{path} is not a run folder (no {events} and {config}): give a run folder or .safetensors files",
    "compare.run_without_files": "the run {name} saved no LoRA file that still exists",
    "compare.not_safetensors": "{path} is not a .safetensors LoRA file",
    "compare.weights_not_numbers": "--weights: {text!r} is not a comma-separated list of numbers such as 0,0.5,1",
    "compare.no_weights": "--weights: give at least one weight, e.g. 0,0.5,1",
})
MAX_STEPS = 1000  # config/sample_prompts.py clamps a sample's steps to 1-1000, as sd-scripts does


def check_numbers(*, steps: int, width: int, height: int, cfg: float | None = None) -> None:
    """The grid's numbers within what a sample image may have (config/sample_prompts.py): 100000 pixels a side
    asked for a 40 GB allocation and ended in a traceback; NaN as the guidance scale rendered noise."""
    for option, value in (("--width", width), ("--height", height)):
        if not 8 <= value <= MAX_SIZE or value % 8:
            raise UserError(Msg.of("compare.size_range", option=option, max=MAX_SIZE, value=value))
    if not 1 <= steps <= MAX_STEPS:
        raise UserError(Msg.of("compare.steps_range", max=MAX_STEPS, value=steps))
    if cfg is not None and not (math.isfinite(cfg) and cfg >= 0):
        raise UserError(Msg.of("compare.cfg_range", value=cfg))


def _check_lora(path: Path) -> None:
    """Only a regular file whose safetensors header is an object (read within its stated size) is rendered."""
    if not is_regular_file(path):
        raise UserError(Msg.of("compare.lora_not_regular", path=str(path)))
    try:
        read_header(path)
    except HeaderError as exc:
        raise UserError(Msg.of("compare.lora_unreadable", path=str(path), detail=exc.detail or exc.reason)) from None


@dataclass
class Inputs:
    files: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    config: TrainingConfig | None = None  # of the (first) run found
    saved: list[SavedFile | None] = field(default_factory=list)  # what the run said of each file (None: no run found)

    def validation(self) -> dict:
        """For the grid's JSON: each row's validation loss (train/validation.py) and the row with the lowest."""
        losses = {label: f.validation_loss for label, f in zip(self.labels, self.saved) if f is not None and f.validation_loss is not None}
        if not losses:
            return {}
        return {"validation_loss": losses, "lowest_validation_loss": min(losses, key=lambda k: losses[k])}


def is_run_dir(path: Path) -> bool:
    return (path / run_files.EVENTS_FILE).is_file() and (path / run_files.CONFIG_FILE).is_file()


def run_config(run_dir: Path) -> TrainingConfig | None:
    from loratrainer.config import ConfigError, load_config

    try:
        return load_config(run_dir / run_files.CONFIG_FILE)
    except (ConfigError, OSError):
        return None


def find_writer(file: Path, run_dir: Path | None = None) -> tuple[Path, SavedFile] | None:
    """The run folder whose events say it wrote `file`: `run_dir` when given, else one under the file's folder
    (`<output>/log/<run>/`, Kohya's default logging folder)."""
    file = file.resolve()
    candidates = [Path(run_dir) / run_files.EVENTS_FILE] if run_dir else sorted(file.parent.glob(f"*/*/{run_files.EVENTS_FILE}"), reverse=True)
    for events_file in candidates:
        record = read_run(events_file.parent)
        for saved in record.files:
            if saved.path.resolve() == file:
                return events_file.parent, saved
    return None


def resolve(paths: list[str], run_dir: Path | None = None) -> Inputs:
    out = Inputs()
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            if not is_run_dir(path):
                raise UserError(Msg.of("compare.not_run_folder", path=str(path), events=run_files.EVENTS_FILE, config=run_files.CONFIG_FILE))
            saved = [f for f in read_run(path).files if f.exists]
            if not saved:
                raise UserError(Msg.of("compare.run_without_files", name=path.name))
            out.files += [f.path for f in saved]
            out.labels += [epoch_label(f) for f in saved]
            out.saved += saved
            out.config = out.config or run_config(path)
        elif os.path.lexists(path):
            if path.suffix.lower() != ".safetensors":
                raise UserError(Msg.of("compare.not_safetensors", path=str(path)))
            _check_lora(path)
            found = find_writer(path, run_dir)
            out.files.append(path)
            out.labels.append(epoch_label(found[1]) if found else path.stem)
            out.saved.append(found[1] if found else None)
            if found and out.config is None:
                out.config = run_config(found[0])
        else:
            raise UserError(Msg.of("compare.lora_missing", path=str(path)))
    return out


def parse_weights(text: str) -> list[float]:
    try:
        weights = [float(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise UserError(Msg.of("compare.weights_not_numbers", text=text)) from None
    if not weights:
        raise UserError(Msg.of("compare.no_weights"))
    for w in weights:
        if not math.isfinite(w):
            raise UserError(Msg.of("compare.not_finite", option="--weights", value=w))
    return weights


def first_sample_prompt(config) -> list[str]:
    """The text of the run's first sample prompt (none when it has none or they do not parse)."""
    if config is None or not config.sampling.sample_prompts.strip():
        return []
    from loratrainer.config.sample_prompts import load_prompts

    try:
        prompts = load_prompts(config.sampling.sample_prompts)
    except (UserError, OSError, UnicodeDecodeError):
        return []
    return [prompts[0].prompt] if prompts else []
