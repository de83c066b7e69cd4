"""Which images are held out for validation loss, as sd-scripts chooses them (library/train_util.py
`split_train_val`, called per subset in `DreamBoothDataset`): each training concept folder's images are shuffled
by `random.seed(validation_seed)` and the last `round(n * validation_split)` are validation images;
regularisation folders are never split. Deterministic: the same folders and seed give the same split.

One difference, on purpose: sd-scripts keeps the first `ceil(n * (1 - split))` images for training, which for
some n (3 images at 0.5: 2 + 2) puts an image in both sets; here training keeps exactly the rest, so a validation
image is never trained on."""

from __future__ import annotations

import random
from typing import Sequence

from loratrainer.data.samples import TrainSample


def split_validation(samples: Sequence[TrainSample], split: float, seed: int) -> tuple[list[TrainSample], list[TrainSample]]:
    """(training, validation) samples; validation is grouped per concept folder, in the shuffled order."""
    if split <= 0:
        return list(samples), []
    held: set[int] = set()
    validation: list[TrainSample] = []
    for folder in dict.fromkeys(s.concept_dir for s in samples if not s.is_reg):
        paths = sorted(s.image_path for s in samples if s.concept_dir == folder and not s.is_reg)
        random.Random(seed).shuffle(paths)  # random.seed(x); random.shuffle(...) in sd-scripts: the same order
        chosen = set(paths[len(paths) - round(len(paths) * split):]) if round(len(paths) * split) else set()
        for s in samples:
            if s.concept_dir == folder and not s.is_reg and s.image_path in chosen:
                held.add(id(s))
                validation.append(s)
    return [s for s in samples if id(s) not in held], validation


def validation_seed(config) -> int:
    """The seed of the split and of the validation noise: validation_seed, else the training seed (sd-scripts:
    `args.validation_seed if not None else args.seed`). A training seed of 0 (picked at launch) stays 0 here, so
    the dataset check shows the same split the run will use."""
    return config.training.validation_seed or config.training.seed
