"""The loss mask of a training item: its mask image through the item's own resize, crop and flip, and the loss
weighted by it at latent resolution exactly as sd-scripts does (library/custom_train_functions.py
apply_masked_loss: the mask area-resized to the loss's size, multiplied in, then the plain mean; not divided by
the mask's sum, so a half-masked image contributes half the loss)."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from loratrainer.data.buckets import fit_to_bucket
from loratrainer.data.samples import TrainSample


def fit_mask(mask: Image.Image, sample: TrainSample, random_crop: bool, rng: random.Random | None, flip: bool) -> torch.Tensor:
    """(H, W) weights in [0, 1] at the bucket size: resized and cropped as its image (fit_to_bucket with the same
    rng state gives the same crop), mirrored when the image is. sd-scripts always centre-crops masks (its TODO in
    ControlNetDataset); here the mask follows a random crop too, so the weights stay on their pixels."""
    fitted, _ = fit_to_bucket(mask, sample.bucket, random_crop, rng, resized=sample.resized)
    weights = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0)
    return torch.flip(weights, [1]) if flip else weights


def apply_masked_loss(loss: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """loss (B, C, h, w) x masks (B, H, W) area-resized to (h, w): sd-scripts' apply_masked_loss."""
    weights = F.interpolate(masks.to(loss.device, loss.dtype)[:, None], size=loss.shape[2:], mode="area")
    return loss * weights
