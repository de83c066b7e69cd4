"""Validation loss, as sd-scripts computes it (train_network.py, PR 1903 and its validation doc): the held-out images
(data/validation.py) are evaluated with no gradients and the LoRA in eval mode, each batch at the same four
timesteps (np.linspace(0, 1000, 6)[1:-1] = 200, 400, 600, 800) with noise from the validation seed, and the
mean over batches x timesteps is the number. Every evaluation draws the same noise for the same image and
timestep, so two evaluations of the same weights give the same number and epochs compare by their weights
alone. The training RNG is not touched (each draw comes from its own generator), as sd-scripts restores its RNG.

Differences from sd-scripts, on purpose: each validation image is evaluated once (its folder's repeats would
only evaluate it again with other noise), and batches are formed per bucket in a fixed order."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from loratrainer.data.samples import TrainSample
from loratrainer.data.validation import validation_seed
from loratrainer.train.dataset import TrainDataset, collate

NUM_VALIDATION_TIMESTEPS = 4  # sd-scripts' constant


@dataclass
class ValidationSet:
    dataset: TrainDataset
    batches: list[list[tuple[int, int, int, int, int]]]  # dataset keys, as the training sampler yields them
    seed: int

    @property
    def images(self) -> int:
        return sum(len(b) for b in self.batches)


def build_validation(config, samples: list[TrainSample], size_conditioning: bool) -> ValidationSet | None:
    """The validation batches: the train batch size, one bucket per batch, at most max_validation_steps of them.
    Pixels, not the latent cache: the VAE's sample is drawn from the item's generator, so it is fixed too."""
    if not samples:
        return None
    seed = validation_seed(config)
    size = config.training.train_batch_size
    order = sorted(range(len(samples)), key=lambda i: (samples[i].bucket, str(samples[i].image_path)))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) == size or samples[current[0]].bucket != samples[i].bucket):
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    limit = config.training.max_validation_steps
    batches = batches[:limit] if limit else batches
    keys = [[(i, 0, b, slot, 0) for slot, i in enumerate(batch)] for b, batch in enumerate(batches)]
    return ValidationSet(TrainDataset(samples, config, seed, None, size_conditioning=size_conditioning), keys, seed)


def validation_timesteps(num_train_timesteps: int) -> list[int]:
    return [int(x) for x in np.linspace(0, num_train_timesteps, NUM_VALIDATION_TIMESTEPS + 2, dtype=int)[1:-1]]


def item_seed(seed: int, index: int, timestep: int) -> int:
    digest = hashlib.blake2b(f"loratrainer-validation:{seed}:{index}:{timestep}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def evaluate(t, validation: ValidationSet, compute_loss) -> float:
    """The mean validation loss of the current weights (every process computes it over the whole set);
    `compute_loss` is the loop's, the training loss itself, called at a fixed timestep."""
    models = [t.unet, *t.text_encoder_views().values()]
    modes = [m.training for m in models]
    for m in models:
        m.eval()  # the LoRA's dropout off (peft's lora_dropout, rank/module dropout)
    losses = []
    try:
        with torch.no_grad():
            for keys in validation.batches:
                batch = collate([validation.dataset[k] for k in keys])
                for timestep in validation_timesteps(t.components.noise_scheduler.config.num_train_timesteps):
                    seeds = [item_seed(validation.seed, k[0], timestep) for k in keys]
                    losses.append(float(compute_loss(t, {**batch, "noise_seeds": seeds}, timestep=timestep)))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return sum(losses) / len(losses)


def maybe_validate(t, compute_loss, epoch_end: bool = False) -> float | None:
    """Validate when the schedule says (validate_every_n_epochs at an epoch's end, validate_every_n_steps after a
    step) and report it: a `validation` event and TensorBoard's loss/validation."""
    v = getattr(t, "validation", None)
    o = t.config.training
    if v is None:
        return None
    if epoch_end:
        due = t.epoch % o.validate_every_n_epochs == 0
    else:
        due = bool(o.validate_every_n_steps) and t.step % o.validate_every_n_steps == 0
    if not due:
        return None
    with t.run.in_phase("validation"):
        loss = evaluate(t, v, compute_loss)
    t.run.emit("validation", step=t.step, epoch=t.epoch, loss=loss, kind="epoch" if epoch_end else "step", images=v.images)
    if t.run.tensorboard is not None:
        t.run.tensorboard.add_scalar("loss/validation", loss, t.step)
    return loss
