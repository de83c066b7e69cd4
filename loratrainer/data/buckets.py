"""Aspect-ratio buckets as Kohya makes them (docs/kohya-compat.md section 6), and the image -> bucket transform.

`make_bucket_resolutions` and `BucketPlan.select` follow sd-scripts' `model_util.make_bucket_resolutions`
and `BucketManager.select_bucket` line by line, so a dataset lands in the same buckets (and therefore makes
the same number of steps) as in Kohya. Where Kohya divides by zero (images or rounded sides under one bucket
step), `select` returns None and the caller names the file instead.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:  # the schema is only a type here; this module stays importable without pydantic
    from loratrainer.config import BucketSettings

Size = tuple[int, int]


def make_bucket_resolutions(max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64) -> list[Size]:
    """Kohya's predefined buckets: the square of max_reso's area, and every (w, h)/(h, w) pair fitting it."""
    max_area = max_reso[0] * max_reso[1]
    resos: set[Size] = set()
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


@dataclass(frozen=True)
class BucketChoice:
    bucket: Size  # (width, height) the image is cropped to
    resized: Size  # (width, height) the image is resized to first; it covers the bucket


@dataclass(frozen=True)
class BucketPlan:
    """The bucket settings of one run. Build it with `from_settings(config.buckets)`."""

    resolution: Size
    enable_bucket: bool = True
    no_upscale: bool = True
    min_size: int = 256
    max_size: int = 2048
    steps: int = 64

    @classmethod
    def from_settings(cls, buckets: "BucketSettings") -> "BucketPlan":
        # sd-scripts' adjust_min_max_bucket_reso_by_steps: min rounded down, max up, to multiples of the step.
        step = buckets.bucket_reso_steps
        lo = buckets.min_bucket_reso - buckets.min_bucket_reso % step
        hi = buckets.max_bucket_reso + (-buckets.max_bucket_reso) % step
        return cls(buckets.resolution, buckets.enable_bucket, buckets.bucket_no_upscale, lo, hi, step)

    @property
    def max_area(self) -> int:
        return self.resolution[0] * self.resolution[1]

    def predefined(self) -> list[Size]:
        """The fixed bucket list (empty with no_upscale, where buckets follow the images)."""
        if not self.enable_bucket:
            return [self.resolution]  # Kohya: one bucket of the training resolution, images resized to cover it
        if self.no_upscale:
            return []
        return make_bucket_resolutions(self.resolution, self.min_size, self.max_size, self.steps)

    def select(self, width: int, height: int) -> BucketChoice | None:
        """The bucket of an upright (width, height) image; None when it is too small for any bucket."""
        if width < 1 or height < 1:
            return None
        if self.enable_bucket and self.no_upscale:
            return self._select_no_upscale(width, height)
        return _select_predefined(self.predefined(), width, height)

    def _select_no_upscale(self, width: int, height: int) -> BucketChoice | None:
        aspect = width / height
        if width * height > self.max_area:
            # Too large: shrink keeping the aspect ratio, rounding whichever side keeps the ratio closer.
            rw = math.sqrt(self.max_area * aspect)
            rh = self.max_area / rw
            bw = self.round_to_steps(rw)
            bh_w = self.round_to_steps(bw / aspect)
            bh = self.round_to_steps(rh)
            bw_h = self.round_to_steps(bh * aspect)
            if min(bw, bh_w, bh, bw_h) == 0:
                return None  # Kohya divides by zero here: the image is too narrow for this resolution
            if abs(bw / bh_w - aspect) < abs(bw_h / bh - aspect):
                resized = (bw, int(bw / aspect + 0.5))
            else:
                resized = (int(bh * aspect + 0.5), bh)
        else:
            resized = (width, height)  # never upscaled
        bucket = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        if bucket[0] == 0 or bucket[1] == 0:
            return None
        return BucketChoice(bucket, resized)

    def round_to_steps(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps


def _select_predefined(resos: list[Size], width: int, height: int) -> BucketChoice:
    aspect = width / height
    if (width, height) in resos:
        reso = (width, height)
    else:
        # The first bucket with the smallest aspect-ratio error (numpy argmin's tie rule, as in Kohya).
        reso = min(resos, key=lambda r: abs(r[0] / r[1] - aspect))
    if aspect > reso[0] / reso[1]:
        scale = reso[1] / height  # wider than the bucket: match heights, crop the sides
    else:
        scale = reso[0] / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    return BucketChoice(reso, resized)


def fit_to_bucket(
    image: Image.Image,
    bucket: Size,
    random_crop: bool = False,
    rng: random.Random | None = None,
    resized: Size | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize `image` to `resized` (default: the smallest size covering the bucket), then crop to the bucket.

    Returns the bucket-sized image and (crop_top, crop_left). Pass the sample's `resized` size to reproduce
    Kohya exactly (with bucket_no_upscale a small image is cropped, not shrunk). The crop is centred unless
    random_crop, which draws from `rng`.
    """
    bw, bh = bucket
    if resized is None:
        scale = max(bw / image.width, bh / image.height)
        resized = (max(bw, int(image.width * scale + 0.5)), max(bh, int(image.height * scale + 0.5)))
    if image.size != tuple(resized):
        image = image.resize(resized, Image.Resampling.LANCZOS)
    rng = rng or random.Random(0)
    left = _offset(image.width - bw, random_crop, rng)
    top = _offset(image.height - bh, random_crop, rng)
    return image.crop((left, top, left + bw, top + bh)), (top, left)


def _offset(excess: int, random_crop: bool, rng: random.Random) -> int:
    if excess <= 0:
        return 0
    return rng.randint(0, excess) if random_crop else excess // 2
