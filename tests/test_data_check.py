"""The dataset check on generated folders: docs/reliability.md rows 1, 2, 7, 8, 10-14 and the report's numbers."""

from __future__ import annotations

import json

import pytest

from loratrainer.config import GROUPS, TrainingConfig
from loratrainer.data.captions import read_caption
from loratrainer.data.check import check_dataset
from loratrainer.data.images import load_image
from tests import datasets as ds


def _check(train_dir, **settings):
    config = TrainingConfig()
    config.folders.train_data_dir = str(train_dir)
    for key, value in settings.items():
        group = next(g for g in GROUPS if hasattr(getattr(config, g), key))
        setattr(getattr(config, group), key, value)
    return check_dataset(config)


def _about(report, fragment):
    return [p for p in report.problems if fragment in p.path]


def test_zero_byte_and_truncated_listed_and_skipped(tmp_path):
    concept = ds.make_concept(tmp_path / "img", "5_dog", 3)
    ds.make_zero_byte(concept / "empty.png")
    ds.make_truncated_jpeg(concept / "cut.jpg")
    report = _check(tmp_path / "img")
    assert report.ok and report.images == 3 and len(report.skipped) == 2
    assert "0 bytes" in _about(report, "empty.png")[0].message
    assert "truncated" in _about(report, "cut.jpg")[0].message
    assert {s.image_path.name for s in report.samples} == {"img_000.png", "img_001.png", "img_002.png"}
    assert "2 skipped" in report.format_text()


def test_junk_ignored_with_one_info_line(tmp_path):
    concept = ds.make_concept(tmp_path / "img", "5_dog", 2)
    ds.make_junk(concept)
    report = _check(tmp_path / "img")
    assert report.ok and report.images == 2 and not report.skipped
    infos = [p for p in report.problems if p.severity == "info" and "ignored" in p.message]
    assert len(infos) == 1 and "5 file(s)" in infos[0].message
    assert [p for p in report.problems if p.severity != "info"] == []


def test_images_found_case_insensitively(tmp_path):
    concept = tmp_path / "img" / "2_x"
    for name in ("a.PNG", "b.JpG", "c.jpeg", "d.WEBP", "e.bmp"):
        ds.make_image(concept / name, (64, 64))
    assert _check(tmp_path / "img").images == 5


@pytest.mark.parametrize("policy,severity,ok", [("skip", "warning", True), ("refuse", "error", False)])
def test_undersized_image_named_skipped_or_refused(tmp_path, policy, severity, ok):
    concept = ds.make_concept(tmp_path / "img", "5_dog", 2)
    ds.make_image(concept / "tiny.png", (40, 40))
    for no_upscale in (True, False):
        report = _check(tmp_path / "img", undersized_images=policy, bucket_no_upscale=no_upscale)
        (problem,) = _about(report, "tiny.png")
        assert problem.severity == severity and "40x40" in problem.message
        assert report.ok is ok and report.images == 2


def test_duplicate_stems_listed(tmp_path):
    concept = ds.make_concept(tmp_path / "img", "5_dog", 1)
    ds.make_image(concept / "a.jpg")
    ds.make_image(concept / "a.png")
    report = _check(tmp_path / "img")
    (problem,) = [p for p in report.problems if "share the name" in p.message]
    assert "a.jpg" in problem.message and "a.png" in problem.message
    assert report.images == 3  # both are still trained; the user is told they share a caption file


def test_caption_encodings(tmp_path):
    concept = tmp_path / "img" / "3_thing"
    cases = {
        "bom": (dict(bom=True), "a red car", "a red car"),
        "crlf": (dict(newline="\r\n"), "two tags, here\nsecond line", "two tags, here"),
        "empty": ({}, "", None),
        "blank": ({}, "  \t \n ", None),
        "plain": ({}, "  Zoë 写真 ", "Zoë 写真"),
    }
    for stem, (kwargs, text, _) in cases.items():
        ds.make_caption(ds.make_image(concept / f"{stem}.png"), text, **kwargs)
    for stem, (_, _, expected) in cases.items():
        assert read_caption(concept / f"{stem}.png", ".txt") == expected
    report = _check(tmp_path / "img")
    captions = {s.image_path.stem: (s.caption, s.caption_is_fallback) for s in report.samples}
    assert captions["bom"] == ("a red car", False) and captions["crlf"] == ("two tags, here", False)
    assert captions["empty"] == ("thing", True) and captions["blank"] == ("thing", True)
    (missing,) = [p for p in report.problems if "no caption" in p.message]
    assert "empty.png" in missing.message and "blank.png" in missing.message and '"thing"' in missing.message


def test_non_utf8_caption_is_an_error_naming_the_file(tmp_path):
    concept = ds.make_concept(tmp_path / "img", "3_thing", 1, captions=False)
    (concept / "img_000.txt").write_bytes("caf\xe9".encode("latin-1"))
    report = _check(tmp_path / "img")
    assert not report.ok and _about(report, "img_000.txt")[0].severity == "error"


def test_images_without_captions_listed_with_fallback(tmp_path):
    ds.make_concept(tmp_path / "img", "10_my dog", 2, captions=False)
    ds.make_concept(tmp_path / "img", "2_cat", 1, caption_extension=".caption")
    report = _check(tmp_path / "img")
    assert report.ok and len(report.uncaptioned) == 3
    dog = [p for p in _about(report, "10_my dog") if p.severity == "warning"][0]  # (the notes name the tiny test images)
    assert '"my dog"' in dog.message and "img_000.png" in dog.message and "img_001.png" in dog.message
    cat = [p for p in _about(report, "2_cat") if p.severity == "warning"][0]
    assert "caption_extension to .caption" in cat.message  # Kohya's .caption/.txt trap is pointed out
    assert report.to_json()["uncaptioned_images"] == 3


def test_folder_names_prefix_zero_and_valid(tmp_path):
    ds.make_dataset(tmp_path / "img", {"cat_photos": 2, "0_dog": 2, "3_bird": 2})
    report = _check(tmp_path / "img")
    (cat,) = _about(report, "cat_photos")
    assert cat.severity == "warning" and "ignored: no `<repeats>_` prefix" in cat.message
    (dog,) = _about(report, "0_dog")
    assert dog.severity == "error" and "0_dog" in dog.path
    assert not report.ok and report.images == 2  # only 3_bird counts


def test_nothing_valid_refuses_with_the_reason(tmp_path):
    ds.make_dataset(tmp_path / "img", {"cat_photos": 2})
    report = _check(tmp_path / "img")
    assert not report.ok and any("no concept folders" in p.message for p in report.problems)


def test_concept_folder_chosen_instead_of_parent(tmp_path):
    concept = ds.make_concept(tmp_path / "img", "10_dog", 3)
    report = _check(concept)
    (problem,) = [p for p in report.problems if p.severity == "error"]
    assert "holds images itself" in problem.message and "choose its parent" in problem.message
    assert str(tmp_path / "img") in problem.message
    # a plain folder of images (no N_ name) gets the same diagnosis and a suggested layout
    ds.make_image(tmp_path / "photos" / "a.png")
    report = _check(tmp_path / "photos")
    assert not report.ok and "holds images itself" in report.problems[0].message


def test_paths_with_spaces_and_non_ascii(tmp_path):
    root = tmp_path / "my set"
    concept = ds.make_concept(root, "10_Zoë 写真", [(640, 384), (384, 640)], captions="Zoë, 写真")
    report = _check(root)
    assert report.ok and report.images == 2
    assert {s.caption for s in report.samples} == {"Zoë, 写真"}
    assert report.samples[0].concept_dir == concept and report.samples[0].repeats == 10
    assert load_image(report.samples[0].image_path).size == report.samples[0].size
    assert json.loads(json.dumps(report.to_json(), ensure_ascii=False))["concepts"][0]["path"] == str(concept)


def test_report_numbers_and_buckets(tmp_path):
    ds.make_dataset(tmp_path / "img", {"4_a": [(640, 384)] * 3, "2_b": [(384, 640), (512, 512)]})
    report = _check(tmp_path / "img", train_batch_size=2, epoch=2)
    data = report.to_json()
    assert data["images"] == 5 and data["samples_per_epoch"] == 4 * 3 + 2 * 2
    assert data["buckets"] == {"384x640": 2, "512x512": 2, "640x384": 12}
    assert data["steps_per_epoch"] == 1 + 1 + 6 and data["total_steps"] == 16
    assert data["problems"] == [] and report.ok


def test_reg_folder_doubles_steps(tmp_path):
    ds.make_dataset(tmp_path / "img", {"10_dog": 4})
    ds.make_dataset(tmp_path / "reg", {"1_dog": 50})
    report = _check(tmp_path / "img", reg_data_dir=str(tmp_path / "reg"))
    assert report.steps.train_samples_per_epoch == 40 and report.steps.reg_samples_per_epoch == 40
    assert report.steps.steps_per_epoch == 80 and report.reg_images == 50


def test_missing_folder_and_empty_setting(tmp_path):
    report = _check(tmp_path / "nope")
    assert not report.ok and "does not exist" in report.problems[0].message
    assert not _check("").ok


def test_samples_load_into_their_buckets(tmp_path):
    """The trainer's path: load_image + fit_to_bucket(sample.resized) gives exactly the bucket the check counted."""
    from loratrainer.data.buckets import fit_to_bucket

    sizes = [(640, 384), (300, 200), (70, 70), (1024, 768), (2000, 900)]
    ds.make_dataset(tmp_path / "img", {"2_mix": sizes})
    ds.make_exif_rotated_jpeg(tmp_path / "img" / "2_mix" / "phone.jpg", stored=(900, 600))
    for no_upscale in (True, False):
        report = _check(tmp_path / "img", bucket_no_upscale=no_upscale)
        assert report.images == 6
        for s in report.samples:
            image = load_image(s.image_path)
            assert image.size == s.size
            assert fit_to_bucket(image, s.bucket, resized=s.resized)[0].size == s.bucket


def test_bucket_settings_kohya_refuses_are_errors_naming_the_setting(tmp_path):
    """sd-scripts (train_network) asserts bucket_reso_steps % 64 == 0 for SD1.5, and min <= resolution <= max."""
    ds.make_dataset(tmp_path / "img", {"2_a": [(640, 384)]})
    cases = [
        (dict(bucket_reso_steps=1), "buckets.bucket_reso_steps"),  # the loha-sd15.json fixture's value
        (dict(bucket_reso_steps=32), "buckets.bucket_reso_steps"),
        (dict(bucket_no_upscale=False, min_bucket_reso=640), "buckets.min_bucket_reso"),
        (dict(bucket_no_upscale=False, max_bucket_reso=448), "buckets.max_bucket_reso"),
    ]
    for settings, path in cases:
        report = _check(tmp_path / "img", **settings)
        assert not report.ok and [p.path for p in report.problems if p.severity == "error"] == [path], settings
    assert _check(tmp_path / "img", bucket_reso_steps=128, max_resolution="512,512").ok
    assert _check(tmp_path / "img", enable_bucket=False, bucket_reso_steps=8).ok  # unused without buckets


def test_min_and_max_bucket_reso_are_rounded_to_the_step_as_in_kohya():
    """sd-scripts' adjust_min_max_bucket_reso_by_steps: min 300 -> 256, max 1000 -> 1024 (step 64)."""
    from loratrainer.config import BucketSettings
    from loratrainer.data.buckets import BucketPlan

    plan = BucketPlan.from_settings(BucketSettings(min_bucket_reso=300, max_bucket_reso=1000, bucket_no_upscale=False))
    assert (plan.min_size, plan.max_size) == (256, 1024)
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in plan.predefined())
