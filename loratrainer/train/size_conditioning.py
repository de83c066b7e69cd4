"""SDXL's size and crop conditioning per image (the UNet's `time_ids`), exactly as sd-scripts computes it.

sd-scripts (library/train_util.py, BaseDataset.__getitem__ and trim_and_resize_if_required) gives the UNet six
numbers per image: original size (h, w) before any resize, crop top-left (top, left), target size (h, w) = the
bucket. The crop is NOT where the image was cut: it is BucketManager.get_crop_ltrb(bucket, original size), Stability
AI's preprocessing, where the image scaled to fit *inside* the bucket would sit centred. A random crop does not change
it (sd-scripts: "I have no idea how to reflect the cropped value in crop left/top in the case of random crop").
A flipped image's left is the bucket width minus that rectangle's right edge. Without buckets sd-scripts uses the
cropped image's size as the original size and (0, 0, 0, 0) as the rectangle (so a flip gives left = width).
Values are truncated to integers as sd-scripts' int() does.
"""

from __future__ import annotations

Size = tuple[int, int]  # (width, height)


def crop_ltrb(bucket: Size, original: Size) -> tuple[float, float, float, float]:
    """BucketManager.get_crop_ltrb: where the image, scaled to fit inside the bucket, sits centred (floats)."""
    bucket_ar = bucket[0] / bucket[1]
    image_ar = original[0] / original[1]
    resized_w: float
    resized_h: float
    if bucket_ar > image_ar:  # the bucket is wider: fit the height
        resized_w, resized_h = bucket[1] * image_ar, bucket[1]
    else:
        resized_w, resized_h = bucket[0], bucket[0] / image_ar
    left = (bucket[0] - resized_w) // 2
    top = (bucket[1] - resized_h) // 2
    return left, top, left + resized_w, top + resized_h


def image_conditioning(original: Size, bucket: Size, *, bucketed: bool = True) -> tuple[Size, tuple[float, float, float, float]]:
    """(original size, crop rectangle) as sd-scripts stores them for an image (also in its latent cache files)."""
    if not bucketed:
        return (bucket[0], bucket[1]), (0, 0, 0, 0)
    return (original[0], original[1]), crop_ltrb(bucket, original)


def time_ids(original: Size, ltrb, target: Size, flipped: bool) -> list[int]:
    """[orig_h, orig_w, crop_top, crop_left, target_h, target_w] (diffusers' add_time_ids order, sd-scripts'
    get_size_embeddings(original_sizes_hw, crop_top_lefts, target_sizes_hw))."""
    left = target[0] - ltrb[2] if flipped else ltrb[0]
    top = ltrb[1]
    return [int(original[1]), int(original[0]), int(top), int(left), int(target[1]), int(target[0])]
