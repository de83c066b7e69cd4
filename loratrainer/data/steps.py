"""Step arithmetic and the batches of an epoch, in one place for the check, the GUI and the trainer.

How Kohya's DreamBoothDataset forms an epoch (docs/kohya-compat.md section 2), which we reproduce:
1. every training image appears `repeats` times;
2. regularisation images are registered with their repeats until there are at least as many reg samples as
   training samples; further passes add one repeat per image (so steps roughly double);
3. samples go into their aspect bucket; each bucket is cut into batches (the last one may be short), so an
   epoch has sum(ceil(bucket size / batch size)) batches;
4. the batch order and each bucket's contents are shuffled every epoch.
With accelerate, each of N processes gets ceil(batches / N) batches (even_batches), and an optimizer step
happens every `gradient_accumulation_steps` batches and at the end of the epoch.

`epoch_batches` builds the batches; `count_steps` counts them without building them; a test holds them equal.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Mapping, Sequence

from loratrainer.data.report import DatasetReport
from loratrainer.data.samples import Size, StepCount, TrainSample

# The settings a run's length depends on besides the images: the Dataset and Training tabs recount when one changes.
STEP_SETTINGS = ("training.train_batch_size", "training.epoch", "training.gradient_accumulation_steps", "training.max_train_steps",
                 "launch.num_processes")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def effective_repeats(samples: Sequence[TrainSample]) -> list[tuple[TrainSample, int]]:
    """(sample, repeats this epoch), with Kohya's regularisation balancing applied to the reg samples.

    Reg samples are taken in the given order (the check sorts by folder, then file name); a reg image that
    is not needed to reach the training count is left out, exactly as Kohya does. Each dataset of a dataset
    config (`TrainSample.group`) balances its own, as each sd-scripts DreamBoothDataset does.
    """
    groups = sorted({s.group for s in samples})
    if len(groups) > 1:
        return [pair for g in groups for pair in effective_repeats([s for s in samples if s.group == g])]
    train = [s for s in samples if not s.is_reg]
    reg = [s for s in samples if s.is_reg]
    out = [(s, s.repeats) for s in train]
    num_train = sum(s.repeats for s in train)
    reg_repeats: dict[int, int] = {}
    n, first_loop = 0, True
    while reg and n < num_train:
        for i, s in enumerate(reg):
            if first_loop:
                reg_repeats[i] = s.repeats
                n += s.repeats
            else:
                reg_repeats[i] += 1
                n += 1
            if n >= num_train:
                break
        first_loop = False
    out.extend((reg[i], r) for i, r in reg_repeats.items())
    return out


def bucket_sizes(samples: Sequence[TrainSample]) -> dict[Size, int]:
    """Samples per bucket in one epoch (repeats and reg balancing included), sorted by bucket."""
    counts: Counter[Size] = Counter()
    for sample, repeats in effective_repeats(samples):
        counts[sample.bucket] += repeats
    return dict(sorted(counts.items()))


def _group_bucket_sizes(samples: Sequence[TrainSample]) -> dict[tuple[int, Size], int]:
    """Samples per (dataset, bucket): sd-scripts' DatasetGroup batches each dataset's buckets on their own."""
    counts: Counter[tuple[int, Size]] = Counter()
    for sample, repeats in effective_repeats(samples):
        counts[(sample.group, sample.bucket)] += repeats
    return dict(counts)


def epoch_batches(samples: Sequence[TrainSample], batch_size: int, seed: int, epoch: int) -> list[list[TrainSample]]:
    """The exact batches of one epoch, in training order; the same seed and epoch give the same batches."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    rng = random.Random(f"loratrainer:{seed}:{epoch}")  # str seeds are stable across runs and platforms
    per_bucket: dict[tuple[int, Size], list[TrainSample]] = {}
    for sample, repeats in effective_repeats(samples):
        per_bucket.setdefault((sample.group, sample.bucket), []).extend([sample] * repeats)
    batches: list[list[TrainSample]] = []
    for bucket in sorted(per_bucket):
        items = per_bucket[bucket]
        rng.shuffle(items)
        batches.extend(items[i : i + batch_size] for i in range(0, len(items), batch_size))
    rng.shuffle(batches)
    return batches


def count_steps(
    samples: Sequence[TrainSample],
    batch_size: int,
    gradient_accumulation_steps: int = 1,
    num_processes: int = 1,
    epochs: int = 1,
    max_train_steps: int = 0,
) -> StepCount:
    """The run's length. max_train_steps > 0 overrides epochs (then epochs = ceil(max / steps per epoch))."""
    if min(batch_size, gradient_accumulation_steps, num_processes) < 1:
        raise ValueError("batch size, gradient accumulation steps and processes must be at least 1")
    reps = effective_repeats(samples)
    train = sum(r for s, r in reps if not s.is_reg)
    reg = sum(r for s, r in reps if s.is_reg)
    batches = sum(_ceil_div(n, batch_size) for n in _group_bucket_sizes(samples).values())
    steps_per_epoch = _ceil_div(_ceil_div(batches, num_processes), gradient_accumulation_steps)
    if max_train_steps > 0:
        epochs = _ceil_div(max_train_steps, steps_per_epoch) if steps_per_epoch else 0
        total = max_train_steps if steps_per_epoch else 0
    else:
        total = steps_per_epoch * epochs
    return StepCount(
        train_samples_per_epoch=train,
        reg_samples_per_epoch=reg,
        batches_per_epoch=batches,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        total_steps=total,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_processes=num_processes,
    )


def recount_steps(report: DatasetReport, settings: Mapping[str, Any]) -> StepCount:
    """The run's length for a checked dataset under other step settings ({path: value}, as a form holds them:
    STEP_SETTINGS and folders.dataset_config), without reading the images again. With a Kohya dataset config its
    batch size is the run's (the check applied it, as the trainer does), whatever the form says. ValueError when
    a setting is not a count."""
    try:
        n = {path: int(settings[path]) for path in STEP_SETTINGS}
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # an emptied box (None), text, inf
        raise ValueError(f"not a step count: {exc}") from None
    batch_size = report.steps.batch_size if str(settings.get("folders.dataset_config") or "").strip() else n["training.train_batch_size"]
    return count_steps(report.samples, batch_size, n["training.gradient_accumulation_steps"], n["launch.num_processes"],
                       n["training.epoch"], n["training.max_train_steps"])
