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


# -- against sd-scripts itself, restated ----------------------------------------------------------------------------------
# kohya-ss sd-scripts library/model_util.py make_bucket_resolutions, library/train_util.py BucketManager.select_bucket
# (with round_to_steps) and adjust_min_max_bucket_reso_by_steps, restated here without numpy: argmin's first-index
# tie rule is min() over the list in order. Compared over many image sizes and settings, so a dataset lands in the
# same buckets (and makes the same steps) as in Kohya, not only for the worked examples above.
def _kohya_resolutions(max_reso, min_size, max_size, divisible):
    max_area = max_reso[0] * max_reso[1]
    resos = {(int(max_area ** 0.5 // divisible) * divisible,) * 2}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.update({(width, height), (height, width)})
        width += divisible
    return sorted(resos)


def _kohya_select(no_upscale, max_reso, resos, steps, w, h):
    def round_to_steps(x):
        x = int(x + 0.5)
        return x - x % steps

    aspect = w / h
    if not no_upscale:
        reso = (w, h) if (w, h) in resos else min(resos, key=lambda r: abs(r[0] / r[1] - aspect))
        scale = reso[1] / h if aspect > reso[0] / reso[1] else reso[0] / w
        return reso, (int(w * scale + 0.5), int(h * scale + 0.5))
    max_area = max_reso[0] * max_reso[1]
    if w * h > max_area:
        rw = (max_area * aspect) ** 0.5
        rh = max_area / rw
        bw = round_to_steps(rw)
        bh_w = round_to_steps(bw / aspect)
        bh = round_to_steps(rh)
        bw_h = round_to_steps(bh * aspect)
        if abs(bw / bh_w - aspect) < abs(bw_h / bh - aspect):
            resized = (bw, int(bw / aspect + 0.5))
        else:
            resized = (int(bh * aspect + 0.5), bh)
    else:
        resized = (w, h)
    return (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps), resized


@pytest.mark.parametrize("resolution, min_reso, max_reso, steps", [
    ((512, 512), 256, 1024, 64), ((768, 512), 320, 2048, 64), ((512, 640), 200, 1000, 32), ((1024, 1024), 512, 2048, 128),
])
@pytest.mark.parametrize("no_upscale", [False, True])
def test_buckets_equal_kohyas_for_many_image_sizes(resolution, min_reso, max_reso, steps, no_upscale):
    from types import SimpleNamespace

    settings = SimpleNamespace(resolution=resolution, enable_bucket=True, bucket_no_upscale=no_upscale,
                               min_bucket_reso=min_reso, max_bucket_reso=max_reso, bucket_reso_steps=steps)
    plan = BucketPlan.from_settings(settings)
    # sd-scripts' adjust_min_max_bucket_reso_by_steps: min rounded down and max up to the step
    lo = min_reso - min_reso % steps
    hi = max_reso if max_reso % steps == 0 else max_reso + steps - max_reso % steps
    assert (plan.min_size, plan.max_size, plan.steps, plan.no_upscale) == (lo, hi, steps, no_upscale)
    resos = _kohya_resolutions(resolution, lo, hi, steps)
    assert plan.predefined() == ([] if no_upscale else resos)
    rng = random.Random(f"{resolution}{steps}{no_upscale}")
    sizes = [(rng.randint(steps, 3000), rng.randint(steps, 3000)) for _ in range(300)]
    sizes += [r for r in resos[:5]] + [(resolution[0] * 2, resolution[1] * 2), resolution, (steps, steps * 9)]
    area = resolution[0] * resolution[1]
    sizes += [(w, area // w) for w in range(1, 5000) if area % w == 0]  # exactly the largest area: not shrunk
    sizes += [(1, 500), (500, 1), (1, 1), (2, 3000)]  # one pixel wide or high is still an image Kohya buckets
    for w, h in sizes:
        try:
            bucket, resized = _kohya_select(no_upscale, resolution, resos, steps, w, h)
        except ZeroDivisionError:  # Kohya fails on an image too narrow for this resolution; we say None (the file is named)
            assert plan.select(w, h) is None, (w, h)
            continue
        if 0 in bucket:
            assert plan.select(w, h) is None, (w, h)
            continue
        choice = plan.select(w, h)
        assert choice is not None and (choice.bucket, choice.resized) == (bucket, resized), (w, h)


def test_a_zero_sized_image_has_no_bucket_and_the_defaults_are_kohyas_and_the_schemas():
    from loratrainer.config import TrainingConfig

    for no_upscale in (True, False):
        plan = BucketPlan((512, 512), no_upscale=no_upscale)
        assert plan.select(0, 10) is None and plan.select(10, 0) is None and plan.select(0, 0) is None
    assert make_bucket_resolutions((512, 512)) == KOHYA_512  # sd-scripts' defaults: 256, 1024, 64
    assert BucketPlan.from_settings(TrainingConfig().buckets) == BucketPlan((512, 512))  # the plan's defaults = the schema's


def test_random_crop_reaches_both_edges_and_an_odd_centre_rounds_down():
    # sd-scripts: a random crop offset drawn from 0..excess inclusive; the centre crop at excess // 2
    ramp = Image.new("RGB", (97, 64))  # 33 px wider than the bucket; the ramp's red says where the crop starts
    ramp.putdata([(x * 2, 0, 0) for y in range(64) for x in range(97)])
    lefts = {fit_to_bucket(ramp, (64, 64), True, random.Random(i), resized=(97, 64))[1][1] for i in range(400)}
    assert lefts == set(range(34))
    image, (top, left) = fit_to_bucket(ramp, (64, 64), False, random.Random(0), resized=(97, 64))
    assert (top, left) == (0, 16) and image.getpixel((0, 0))[0] == 32
