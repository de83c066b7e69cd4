"""Training batches: the data layer's epoch_batches, split between processes, loaded by a torch DataLoader.

Every process builds the same batch list from the same seed and takes batch i when i % processes == its
rank; the list is padded from its start so every process gets ceil(batches / processes) (accelerate's
even_batches), which is what loratrainer.data.steps counts. Per-item randomness (flip, crop, caption
shuffle, colour) comes from an rng seeded by (seed, epoch, batch, slot), so workers and resumes agree.
The diffusion noise, timestep and VAE sample of an item come from a generator seeded by (seed, epoch, image,
k-th use of that image in the epoch's whole batch list): which process trains an image does not change them,
so two processes at batch 1 train what one process at batch 2 trains when their batches hold the same images.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from loratrainer.config import TrainingConfig
from loratrainer.data.buckets import fit_to_bucket
from loratrainer.data.images import load_image
from loratrainer.data.masks import load_mask, uses_masks
from loratrainer.data.samples import TrainSample
from loratrainer.data.steps import count_steps, epoch_batches
from loratrainer.train.captions import process_caption
from loratrainer.train.masks import fit_mask
from loratrainer.train.size_conditioning import image_conditioning, time_ids

Key = tuple[int, int, int, int, int]  # (sample index, epoch, batch index, slot in batch, k-th use of the image this epoch)


def _process_batches(samples: Sequence[TrainSample], batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[tuple[int, int]]]:
    """This process's batches as (sample index, k-th use of it in the epoch), k counted over the whole batch list."""
    index = {id(s): i for i, s in enumerate(samples)}
    uses: dict[int, int] = {}
    batches = []
    for b in epoch_batches(samples, batch_size, seed, epoch):
        batch = []
        for s in b:
            i = index[id(s)]
            batch.append((i, uses.get(i, 0)))
            uses[i] = uses.get(i, 0) + 1
        batches.append(batch)
    per_process = -(-len(batches) // world)
    padded = batches + batches[: per_process * world - len(batches)]
    return padded[rank::world]


def noise_seed(seed: int, epoch: int, index: int, use: int) -> int:
    """A 63-bit seed for one item's noise, timestep and VAE sample (stable across processes, runs and platforms)."""
    import hashlib

    digest = hashlib.blake2b(f"loratrainer-noise:{seed}:{epoch}:{index}:{use}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochBatchSampler(Sampler[list[Key]]):
    def __init__(self, samples: Sequence[TrainSample], batch_size: int, seed: int, rank: int, world: int):
        self.samples, self.batch_size, self.seed, self.rank, self.world = samples, batch_size, seed, rank, world
        self.epoch, self.skip = 1, 0
        # Every epoch has as many batches (only their order changes): counted once, not rebuilt for len().
        self.per_process = -(-count_steps(samples, batch_size).batches_per_epoch // world)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The epoch to yield; a resumed run skips the batches it trained before it stopped."""
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self) -> Iterator[list[Key]]:
        batches = _process_batches(self.samples, self.batch_size, self.seed, self.epoch, self.rank, self.world)
        for b, batch in enumerate(batches):
            if b >= self.skip:
                yield [(i, self.epoch, b, slot, use) for slot, (i, use) in enumerate(batch)]

    def __len__(self) -> int:
        return self.per_process - self.skip


class TrainDataset(Dataset):
    """Items are dicts: `latents` (from the cache) or `pixels` in [-1, 1], `caption`, `is_reg`; with
    `size_conditioning` (SDXL) also `time_ids`, sd-scripts' six size and crop numbers (train/size_conditioning.py)."""

    def __init__(self, samples: Sequence[TrainSample], config: TrainingConfig, seed: int, latents: dict | None = None,
                 size_conditioning: bool = False):
        self.samples = list(samples)
        self.background = config.dataset.alpha_background
        self.seed = seed
        self.latents = latents  # sample index -> latent_cache.Latents: (latents, flipped or None, original size, crop, mask or None)
        self.size_conditioning = size_conditioning
        self.bucketed = config.buckets.enable_bucket
        self.config = config
        self.masked = uses_masks(config)  # items carry `mask`: (H, W) loss weights (train/masks.py)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> dict:
        index, epoch, batch, slot, use = key
        sample = self.samples[index]
        rng = random.Random(f"{self.seed}:{epoch}:{batch}:{slot}")
        d = self.config.dataset  # captions and augmentation, read by the settings' own names
        flip = d.flip_aug and rng.random() < 0.5
        item = {"caption": process_caption(sample.caption, d, epoch, rng), "is_reg": sample.is_reg,
                "noise_seed": noise_seed(self.seed, epoch, index, use)}
        if self.latents is not None:
            entry = self.latents[index]
            item["latents"] = entry[1] if flip else entry[0]
            if self.masked:  # cached unflipped at the bucket size (sd-scripts' npz alpha_mask), mirrored here
                item["mask"] = torch.flip(entry[4], [1]) if flip else entry[4]
        else:
            crop_rng = random.Random()
            crop_rng.setstate(rng.getstate())  # the mask draws the same crop as its image
            item["pixels"] = image_tensor(load_training_image(sample, self.background, rng, flip, random_crop=d.random_crop, color_aug=d.color_aug))
            if self.masked:
                mask = load_mask(sample, self.config)
                assert mask is not None  # masks are on (self.masked): load_mask gives one or raises
                item["mask"] = fit_mask(mask, sample, d.random_crop, crop_rng, flip)
        if self.size_conditioning:
            # where the image is resized and cropped: the cache's values (as sd-scripts reads them back), else the image's
            original, ltrb = entry[2:4] if self.latents is not None else image_conditioning(sample.size, sample.bucket, bucketed=self.bucketed)
            item["time_ids"] = torch.tensor(time_ids(original, ltrb, sample.bucket, flip))
        return item


def load_training_image(sample: TrainSample, background: str, rng: random.Random, flip: bool, *, random_crop: bool = False,
                        color_aug: bool = False) -> Image.Image:
    """The image as a step trains it; `random_crop` and `color_aug` are dataset.random_crop and dataset.color_aug."""
    image = load_image(sample.image_path, background)
    image, _ = fit_to_bucket(image, sample.bucket, random_crop, rng, resized=sample.resized)
    if color_aug:
        image = shift_hue(image, rng.uniform(-8 / 180, 8 / 180))  # sd-scripts: HueSaturationValue(hue_shift_limit=8)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


def shift_hue(image: Image.Image, amount: float) -> Image.Image:
    hsv = np.asarray(image.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(amount * 255))) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def image_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float in [-1, 1], as the VAE expects."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def collate(items: list[dict]) -> dict:
    data = "latents" if "latents" in items[0] else "pixels"
    batch = {
        data: torch.stack([it[data] for it in items]),
        "captions": [it["caption"] for it in items],
        "is_reg": torch.tensor([it["is_reg"] for it in items], dtype=torch.bool),
        "noise_seeds": [it["noise_seed"] for it in items],
    }
    if "mask" in items[0]:
        batch["masks"] = torch.stack([it["mask"] for it in items])
    if "time_ids" in items[0]:
        batch["time_ids"] = torch.stack([it["time_ids"] for it in items])
    return batch


def build_loader(dataset: TrainDataset, sampler: EpochBatchSampler, config: TrainingConfig) -> DataLoader:
    workers = config.dataset.max_data_loader_n_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0 and config.dataset.persistent_data_loader_workers,
        # Each epoch's iterator draws a worker base seed; from the global torch RNG that would shift the noise of
        # the steps after it, so a run resumed mid-epoch (its iterator made again) would train on other noise.
        # Per-item randomness is seeded by (seed, epoch, batch, slot) above and does not use this seed.
        generator=torch.Generator().manual_seed(0),
    )


