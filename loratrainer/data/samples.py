"""The typed records that the dataset check hands to the trainer: one usable image, and the step count."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

Size = tuple[int, int]


@dataclass(frozen=True)
class TrainSample:
    """One usable image and everything the trainer needs to know about it before opening it."""

    image_path: Path
    caption: str  # after the fallback (the concept name) when the image has no caption
    caption_is_fallback: bool
    concept_dir: Path
    repeats: int  # the folder's repeats (reg balancing may change the effective count, see steps.py)
    is_reg: bool
    size: Size  # upright (width, height) from the header
    bucket: Size  # (width, height) it is cropped to
    resized: Size  # (width, height) it is resized to before the crop (covers the bucket)
    group: int = 0  # its [[datasets]] in a dataset config: batches and reg balancing are per group, as in sd-scripts


@dataclass(frozen=True)
class StepCount:
    """How long a run is, computed exactly as the trainer batches (see steps.py)."""

    train_samples_per_epoch: int  # sum of repeats x images over the training folders
    reg_samples_per_epoch: int  # regularisation samples after Kohya's balancing (0 without reg images)
    batches_per_epoch: int  # sum over buckets of ceil(samples in bucket / batch size)
    steps_per_epoch: int  # optimizer steps: ceil(ceil(batches / processes) / gradient accumulation)
    epochs: int
    total_steps: int
    batch_size: int
    gradient_accumulation_steps: int
    num_processes: int

    @property
    def samples_per_epoch(self) -> int:
        return self.train_samples_per_epoch + self.reg_samples_per_epoch
