"""The step count equals a brute-force count of the batches a run really makes (docs/kohya-compat.md section 2)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from loratrainer.config import TrainingConfig
from loratrainer.data.check import check_dataset
from loratrainer.data.samples import TrainSample
from loratrainer.data.steps import count_steps, effective_repeats, epoch_batches, recount_steps
from tests import datasets as ds

# Sizes under 512*512 pixels, so with bucket_no_upscale each bucket is simply the size rounded down to 64:
# the brute force can compute buckets by hand.
SIZES = [(512, 512), (640, 384), (384, 640), (448, 576), (600, 400), (520, 500)]
TRAIN = {"3_dog": [SIZES[i % 6] for i in range(7)], "2_cat": [SIZES[(i * 5) % 6] for i in range(5)], "5_bird photo": SIZES[:2]}
REG = {"1_dog": [SIZES[i % 4] for i in range(9)], "2_animal": [SIZES[3]] * 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    return ds.make_dataset(root / "image", TRAIN), ds.make_dataset(root / "reg", REG)


def _brute_force_steps(with_reg: bool, batch: int, accum: int, procs: int, epochs: int, max_steps: int) -> tuple[int, int]:
    """(steps per epoch, total steps) by listing every sample, every batch, every process's share, every step."""
    bucket = lambda size: (size[0] - size[0] % 64, size[1] - size[1] % 64)  # noqa: E731
    items = [bucket(s) for name, sizes in sorted(TRAIN.items()) for s in sizes for _ in range(int(name.split("_")[0]))]
    if with_reg:
        # Kohya: register reg images (folder order, then file order) with their repeats until the reg samples
        # reach the training samples; later rounds add one sample per image.
        reg_images = [(int(name.split("_")[0]), bucket(s)) for name, sizes in sorted(REG.items()) for s in sizes]
        reg_items: list[tuple[int, int]] = []
        for round_no in itertools.count():
            for repeats, b in reg_images:
                if len(reg_items) >= len(items):
                    break
                reg_items += [b] * (repeats if round_no == 0 else 1)
            if len(reg_items) >= len(items):
                break
        items += reg_items
    batches = []
    for b, n in Counter(items).items():
        members = [b] * n
        batches += [members[i : i + batch] for i in range(0, n, batch)]
    per_process = math.ceil(len(batches) / procs)  # accelerate even_batches: short processes wrap around
    steps_per_epoch = sum(1 for i in range(per_process) if (i + 1) % accum == 0 or i == per_process - 1)
    total, epoch = 0, 0
    while (max_steps > 0 and total < max_steps) or (max_steps == 0 and epoch < epochs):
        for _ in range(steps_per_epoch):
            if max_steps and total >= max_steps:
                break
            total += 1
        epoch += 1
    return steps_per_epoch, total


@pytest.mark.parametrize("with_reg", [False, True])
@pytest.mark.parametrize("procs", [1, 2])
@pytest.mark.parametrize("accum", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_step_count_equals_brute_force(dataset, batch, accum, procs, with_reg):
    train_dir, reg_dir = dataset
    config = TrainingConfig()
    config.folders.train_data_dir = str(train_dir)
    config.folders.reg_data_dir = str(reg_dir) if with_reg else ""
    config.training.train_batch_size = batch
    config.training.gradient_accumulation_steps = accum
    config.training.epoch = 3
    report = check_dataset(config, num_processes=procs)
    assert report.ok, report.format_text()
    assert (report.steps.steps_per_epoch, report.steps.total_steps) == _brute_force_steps(with_reg, batch, accum, procs, 3, 0)
    assert report.steps.epochs == 3
    # the batches the trainer will iterate are exactly as many as counted
    assert len(epoch_batches(report.samples, batch, seed=1, epoch=0)) == report.steps.batches_per_epoch


@pytest.mark.parametrize("max_steps", [1, 50, 137])
def test_max_train_steps_overrides_epochs(dataset, max_steps):
    config = TrainingConfig()
    config.folders.train_data_dir = str(dataset[0])
    config.training.train_batch_size = 2
    config.training.max_train_steps = max_steps
    steps = check_dataset(config).steps
    spe, total = _brute_force_steps(False, 2, 1, 1, 1, max_steps)
    assert steps.total_steps == total == max_steps
    assert steps.epochs == math.ceil(max_steps / spe)


def test_recount_from_the_form_equals_a_new_check(dataset):
    """What the Dataset and Training tabs show as the step settings change (one recount, no disk access) is what a
    new check, and so the run, would count with those settings."""
    config = TrainingConfig()
    config.folders.train_data_dir, config.folders.reg_data_dir = str(dataset[0]), str(dataset[1])
    report = check_dataset(config)
    form = {"training.train_batch_size": 3.0, "training.epoch": 4, "training.gradient_accumulation_steps": 2,
            "training.max_train_steps": 0, "launch.num_processes": 2, "folders.dataset_config": ""}  # Number boxes give floats
    config.training.train_batch_size, config.training.epoch, config.training.gradient_accumulation_steps = 3, 4, 2
    config.launch.num_processes = 2
    assert recount_steps(report, form) == check_dataset(config, num_processes=2).steps
    with pytest.raises(ValueError):
        recount_steps(report, {**form, "training.epoch": None})  # an emptied box: the tabs say "enter whole numbers"


def _samples(spec: list[tuple[int, bool, tuple[int, int]]]) -> list[TrainSample]:
    return [
        TrainSample(f"img{i}.png", "c", False, f"{r}_c", r, reg, b, b, b)  # type: ignore[arg-type]
        for i, (r, reg, b) in enumerate(spec)
    ]


def test_tutorial_example_2400_steps():
    samples = _samples([(40, False, (512, 512))] * 20)
    steps = count_steps(samples, batch_size=1, epochs=3)
    assert (steps.samples_per_epoch, steps.steps_per_epoch, steps.total_steps) == (800, 800, 2400)


def test_reg_balancing_replicates_kohya_loop():
    # 10 training samples; reg images with repeats 3, 1, 2: first pass registers 3 + 1 + 2 = 6,
    # second pass adds +1 each: 7, 8, 9, third pass: 10 -> stop. Final repeats 5, 2, 3.
    samples = _samples([(10, False, (64, 64)), (3, True, (64, 64)), (1, True, (64, 64)), (2, True, (64, 64))])
    reps = [r for s, r in effective_repeats(samples) if s.is_reg]
    assert reps == [5, 2, 3]
    # more reg samples than needed: the first image is registered and the rest are left out, as in Kohya
    samples = _samples([(2, False, (64, 64)), (5, True, (64, 64)), (5, True, (64, 64))])
    assert [r for s, r in effective_repeats(samples) if s.is_reg] == [5]


def test_batches_are_per_bucket_and_deterministic():
    samples = _samples([(3, False, (64, 64)), (2, False, (128, 64)), (1, True, (64, 128))])
    a = epoch_batches(samples, 2, seed=7, epoch=1)
    assert a == epoch_batches(samples, 2, seed=7, epoch=1)
    assert all(len({s.bucket for s in batch}) == 1 for batch in a)  # never mixed buckets
    assert sorted(len(b) for b in a) == [1, 1, 2, 2, 2, 2]  # 3 -> 2+1, 2 -> 2, reg 1 repeat x5 -> 2+2+1
    assert Counter(s.is_reg for b in a for s in b) == {False: 5, True: 5}


def test_empty_dataset_counts_zero_without_division_error():
    steps = count_steps([], batch_size=4, gradient_accumulation_steps=3, num_processes=2, epochs=5, max_train_steps=100)
    assert (steps.steps_per_epoch, steps.total_steps, steps.epochs) == (0, 0, 0)


def test_accelerate_shards_batches_as_counted():
    """ceil(batches / processes) per process is what accelerate's BatchSamplerShard really yields."""
    torch_data = pytest.importorskip("torch.utils.data")
    from accelerate.data_loader import BatchSamplerShard

    for n, procs in [(7, 2), (8, 2), (5, 3)]:
        sampler = torch_data.BatchSampler(range(n), batch_size=1, drop_last=False)
        lengths = {len(list(BatchSamplerShard(sampler, procs, i, even_batches=True))) for i in range(procs)}
        assert lengths == {math.ceil(n / procs)}


def test_batches_hold_the_given_sample_objects():
    # The trainer maps batch members back to sample indices by identity; repeats must not copy samples.
    samples = _samples([(3, False, (64, 64)), (2, True, (64, 64))])
    ids = {id(s) for s in samples}
    assert all(id(s) in ids for b in epoch_batches(samples, 2, seed=0, epoch=3) for s in b)
