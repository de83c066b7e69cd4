"""Encoding every training image once with the VAE, in memory and optionally on disk as Kohya names it.

Disk files are `<stem>_<WWWW>x<HHHH>_sd.npz` next to the image with Kohya's keys (latents, latents_flipped,
original_size, crop_ltrb: the values sd-scripts writes, which SDXL's size conditioning reads back, see
train/size_conditioning.py) plus `loratrainer_fingerprint`: a hash of the image bytes, the bucket, the resize,
the background colour and the VAE. A file whose fingerprint differs is one of ours and is rewritten; a file
without one (written by Kohya or someone else) is never touched: we use fresh latents in memory instead.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import numpy as np
import torch

from loratrainer.data.masks import find_mask, load_mask
from loratrainer.data.samples import TrainSample
from loratrainer.train.dataset import image_tensor, load_training_image
from loratrainer.train.masks import fit_mask
from loratrainer.train.npz_cache import FINGERPRINT_KEY, write_cache
from loratrainer.train.size_conditioning import image_conditioning

log = logging.getLogger("loratrainer.train")
# A cached image: (latents, flipped latents or None, original size (w, h), crop rectangle (l, t, r, b), loss mask or
# None); the size and crop are sd-scripts' values for SDXL's size conditioning, so a cached latent carries them in
# memory as on disk. The mask ((H, W) weights at the bucket size, unflipped) is sd-scripts' npz `alpha_mask`.
Latents = tuple[torch.Tensor, torch.Tensor | None, tuple, tuple, torch.Tensor | None]
# Part of the fingerprint: files of ours written before crop_ltrb followed sd-scripts are rewritten once.
CACHE_VERSION = "2"


def npz_path(sample: TrainSample) -> Path:
    w, h = sample.bucket
    return sample.image_path.with_name(f"{sample.image_path.stem}_{w:04d}x{h:04d}_sd.npz")


def fingerprint(sample: TrainSample, background: str, vae_id: str, masks=None) -> str:
    digest = hashlib.sha256(Path(sample.image_path).read_bytes())
    digest.update(f"|{sample.bucket}|{sample.resized}|{background}|{vae_id}|v{CACHE_VERSION}".encode())
    if masks is not None:  # a file cached with a mask is reused only with the same mask (its file's bytes, or alpha)
        d = masks.dataset
        mask_file = find_mask(d.conditioning_data_dir, sample.image_path) if d.masked_loss and d.conditioning_data_dir.strip() else None
        digest.update(b"|mask:" + (hashlib.sha256(mask_file.read_bytes()).digest() if mask_file else b"alpha"))
    return digest.hexdigest()


@torch.no_grad()
def encode_image(vae, sample: TrainSample, background: str, flip: bool, device, dtype, seed: int | None = None) -> torch.Tensor:
    """Unscaled latents (C, h, w) as Kohya stores them; the trainer multiplies by the VAE's scaling factor.
    `seed`: the VAE sample's own generator (else the global RNG)."""
    image = load_training_image(sample, background, random.Random(0), flip)  # no crop or colour: those forbid caching
    pixels = image_tensor(image)[None].to(device, dtype)
    generator = None if seed is None else torch.Generator(device=pixels.device).manual_seed(seed)
    return vae.encode(pixels).latent_dist.sample(generator=generator)[0].float().cpu()


def latent_seed(seed: int, index: int, flip: bool) -> int:
    """Seeded by the run's seed and the image, not by the process that encodes it: the cache is the same however
    it is shared out between processes."""
    return int.from_bytes(hashlib.blake2b(f"loratrainer-latent:{seed}:{index}:{flip}".encode(), digest_size=8).digest(), "little") >> 1


def cache_latents(samples: list[TrainSample], vae, *, flip: bool, to_disk: bool, background: str, vae_id: str, device, dtype,
                  rank: int = 0, world: int = 1, seed: int = 0, bucketed: bool = True, masks=None, run=None) -> dict[int, Latents]:
    """Latents (index -> (latents, flipped latents or None)) of this process's share: every `world`-th sample
    from `rank`, so several processes encode (and write) the dataset once between them; `join_shares` joins.
    `masks`: the run's config when it uses masked_loss or alpha_mask (data/masks.py); each entry then carries its mask.

    `run` (a RunContext): a stop is checked before each image (StoppedBeforeTraining) and the count goes out
    as `caching_latents` phase events (the main process's share, scaled to the whole dataset)."""
    out: dict[int, Latents] = {}
    reused = 0
    total = len(samples)
    for i, sample in enumerate(samples):
        if i % world != rank:
            continue
        if run is not None:
            run.check_stop()
            run.phase_progress("caching_latents", min(total, len(out) * world), total)
        fp = fingerprint(sample, background, vae_id, masks) if to_disk else ""
        cached = _read(npz_path(sample), fp, flip, masks is not None) if to_disk else None
        if cached is not None:
            out[i] = cached
            reused += 1
            continue
        plain = encode_image(vae, sample, background, False, device, dtype, latent_seed(seed, i, False))
        flipped = encode_image(vae, sample, background, True, device, dtype, latent_seed(seed, i, True)) if flip else None
        # latents are cached only without random crop (the schema's rule): the mask takes the same centre crop
        full_mask = load_mask(sample, masks) if masks is not None else None  # masks: the config, given when they are on
        mask = fit_mask(full_mask, sample, False, None, False) if full_mask is not None else None
        out[i] = (plain, flipped, *image_conditioning(sample.size, sample.bucket, bucketed=bucketed), mask)
        if to_disk:
            _write(npz_path(sample), out[i], fp)
    if run is not None:
        run.phase_progress("caching_latents", total, total)
    log.info("latents cached for %d images (%d reused from disk)", len(out), reused)
    return out


def join_shares(share: dict[int, Latents], accelerator) -> dict[int, Latents]:
    """Every process's share, on every process (one all-gather of CPU tensors)."""
    if accelerator.num_processes == 1:
        return share
    from accelerate.utils import gather_object

    joined: dict[int, Latents] = {}
    for part in gather_object([share]):
        joined.update(part)
    return joined


def _read(path: Path, fp: str, flip: bool, masked: bool = False) -> Latents | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            if FINGERPRINT_KEY not in npz or str(npz[FINGERPRINT_KEY]) != fp or (flip and "latents_flipped" not in npz):
                return None
            if masked and "alpha_mask" not in npz:
                return None
            flipped = torch.from_numpy(npz["latents_flipped"]) if flip else None
            mask = torch.from_numpy(npz["alpha_mask"]) if masked else None
            return (torch.from_numpy(npz["latents"]), flipped, tuple(npz["original_size"].tolist()),
                    tuple(npz["crop_ltrb"].tolist()), mask)
    except (OSError, ValueError, KeyError):
        return None


def _write(path: Path, entry: Latents, fp: str) -> None:
    plain, flipped, original, ltrb, mask = entry
    arrays = {
        "latents": plain.numpy(),
        "original_size": np.array(original),
        "crop_ltrb": np.array(ltrb),  # sd-scripts' get_crop_ltrb (floats when it computes floats)
    }
    if flipped is not None:
        arrays["latents_flipped"] = flipped.numpy()
    if mask is not None:
        arrays["alpha_mask"] = mask.numpy()  # sd-scripts' key: (H, W) float32 in [0, 1] at the bucket size
    write_cache(path, arrays, fp, "latents")
