"""Buckets equal Kohya's (docs/kohya-compat.md section 6). Expected values are derived by hand below, not printed by us."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from loratrainer.data.buckets import BucketPlan, fit_to_bucket, make_bucket_resolutions

# Kohya's make_bucket_resolutions((512, 512), 256, 1024, 64), worked out by hand: area 262144; for each width
# 256..1024 step 64, height = min(1024, floor(262144 / w / 64) * 64): 256->1024, 320->768, 384->640,
# 448->576, 512->512, 576->448, 640->384, 704->320, 768->320, 832->256, 896->256, 960->256, 1024->256;
# every pair is added both ways, plus the square 512x512.
KOHYA_512 = sorted({
    (256, 1024), (1024, 256), (320, 768), (768, 320), (384, 640), (640, 384), (448, 576), (576, 448),
    (512, 512), (704, 320), (320, 704), (832, 256), (256, 832), (896, 256), (256, 896), (960, 256), (256, 960),
})


def test_bucket_list_for_512_equals_kohya():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == KOHYA_512
    assert len(KOHYA_512) == 17


def test_larger_max_bucket_reso_adds_nothing_at_512():
    # heights fall under min 256 beyond width 1024, so 2048 (our default) gives the same list
    assert make_bucket_resolutions((512, 512), 256, 2048, 64) == KOHYA_512


def test_upscale_selection_closest_aspect_then_cover():
    plan = BucketPlan((512, 512), enable_bucket=True, no_upscale=False, min_size=256, max_size=1024, steps=64)
    # 300x200 (1.5): 640x384 (1.667) is closest; width is the tighter side, scale 640/300 -> 640 x 427
    choice = plan.select(300, 200)
    assert choice.bucket == (640, 384) and choice.resized == (640, 427)
    # an exact bucket size is kept as is
    assert plan.select(448, 576).bucket == (448, 576)
    # a very tall image goes to the tallest bucket
    assert plan.select(100, 1000).bucket == (256, 1024)


def test_no_upscale_small_images_are_cropped_not_resized():
    plan = BucketPlan((512, 512), no_upscale=True, steps=64)
    c = plan.select(300, 200)
    assert c.bucket == (256, 192) and c.resized == (300, 200)  # 300 - 300 % 64, 200 - 200 % 64
    c = plan.select(70, 70)
    assert c.bucket == (64, 64) and c.resized == (70, 70)


def test_no_upscale_large_image_follows_kohya_rounding():
    # Kohya's select_bucket for 1024x768 at max area 512*512 (round_to_steps(x) = int(x+.5) - int(x+.5) % 64):
    # aspect 4/3; resized_width = sqrt(262144 * 4/3) = 591.2, resized_height = 443.4
    # width first: bw = 576, height for it = round_to_steps(432) = 384 -> ratio 1.5 (error 0.167)
    # height first: bh = 384, width for it = round_to_steps(512) = 512 -> ratio 1.333 (error 0)
    # height wins: resized = (int(384 * 4/3 + .5), 384) = (512, 384); bucket = (512, 384)
    c = BucketPlan((512, 512), no_upscale=True).select(1024, 768)
    assert c.bucket == (512, 384) and c.resized == (512, 384)
    # 2000x1000: aspect 2; rw = 724.1 -> 704, h for it round(352) -> 320 (ratio 2.2);
    # rh = 362.0 -> 320, w for it round(640) -> 640 (ratio 2.0): resized (640, 320), bucket (640, 320)
    c = BucketPlan((512, 512), no_upscale=True).select(2000, 1000)
    assert c.bucket == (640, 320) and c.resized == (640, 320)


@pytest.mark.parametrize("size", [(40, 40), (1, 1), (63, 500), (20000, 60), (60, 20000)])
def test_too_small_or_too_narrow_is_none_never_zero_division(size):
    for no_upscale in (True, False):
        plan = BucketPlan((512, 512), no_upscale=no_upscale)
        choice = plan.select(*size)
        if choice is not None:
            assert min(choice.bucket) > 0
    assert BucketPlan((512, 512), no_upscale=True).select(40, 40) is None


def test_disabled_buckets_give_one_bucket_of_the_resolution():
    plan = BucketPlan((512, 768), enable_bucket=False)
    assert plan.predefined() == [(512, 768)]
    for size in [(1000, 300), (300, 1000), (64, 64)]:
        assert plan.select(*size).bucket == (512, 768)


def test_fit_to_bucket_covers_then_crops_centre():
    img = Image.new("RGB", (300, 200), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 20, 200))  # a red strip on the far left is cropped away by a centre crop
    out, (top, left) = fit_to_bucket(img, (128, 128))
    assert out.size == (128, 128)
    assert top == 0 and left == (192 - 128) // 2  # covered at 192x128
    assert out.getpixel((0, 64)) == (0, 0, 0)


def test_fit_to_bucket_with_kohya_resized_size_and_random_crop():
    img = Image.new("RGB", (70, 70), (10, 20, 30))
    out, (top, left) = fit_to_bucket(img, (64, 64), resized=(70, 70))
    assert out.size == (64, 64) and (top, left) == (3, 3)
    offsets = {fit_to_bucket(img, (64, 64), True, random.Random(i), resized=(70, 70))[1] for i in range(30)}
    assert len(offsets) > 1 and all(0 <= t <= 6 and 0 <= l <= 6 for t, l in offsets)
