"""The dataset check: one call that the CLI, the GUI and the trainer make before training.

`check_dataset(config)` scans the folders, reads every image header and caption, assigns buckets and counts
the steps with the same functions the trainer batches with, and returns one report in which every problem
names its file or folder and the fix. It never decodes pixels of healthy images, so it stays fast.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from loratrainer.config import TrainingConfig
from loratrainer.data.buckets import BucketPlan
from loratrainer.data.captions import CaptionError, CaptionText, fallback_caption, read_caption_file
from loratrainer.data.folders import Concept, scan_data_dir
from loratrainer.data.images import ImageError, probe_image
from loratrainer.data.problems import Problem
from loratrainer.data.report import DatasetReport
from loratrainer.data.samples import TrainSample
from loratrainer.data.steps import bucket_sizes, count_steps


def check_dataset(config: TrainingConfig, num_processes: int | None = None) -> DatasetReport:
    """Everything about the dataset that can be known before training; `report.ok` says whether to start."""
    problems = _settings_problems(config)
    concepts: list[Concept] = []
    folders = config.folders
    if not folders.train_data_dir.strip():
        problems.append(Problem.at("folders.train_data_dir", "error", "no image folder chosen: set it to the parent of your <repeats>_<name> folders"))
    else:
        scan = scan_data_dir(folders.train_data_dir, config.dataset.caption_extension)
        concepts += scan.concepts
        problems += scan.problems
    if folders.reg_data_dir.strip():
        scan = scan_data_dir(folders.reg_data_dir, config.dataset.caption_extension, is_reg=True)
        concepts += scan.concepts
        problems += scan.problems
    plan = BucketPlan.from_settings(config.buckets)
    report = DatasetReport(problems, [], count_steps([], 1), {})
    for concept in concepts:
        _check_concept(concept, config, plan, report)
    if any(not c.is_reg for c in concepts) and report.images == 0:
        problems.append(Problem.at(folders.train_data_dir, "error", "no usable training images: fix or add images (see the lines above)"))
    o = config.optimizer
    report.steps = count_steps(
        report.samples,
        o.train_batch_size,
        o.gradient_accumulation_steps,
        num_processes or config.launch.num_processes,
        o.epoch,
        o.max_train_steps,
    )
    report.buckets = bucket_sizes(report.samples)
    return report


def _settings_problems(config: TrainingConfig) -> list[Problem]:
    """sd-scripts' bucket asserts for SD1.5 (train_network's verify_bucket_reso_steps(64), and the min/max checks),
    as errors naming the setting; min/max only matter without bucket_no_upscale, where buckets are predefined."""
    b = config.buckets
    w, h = b.resolution
    plan = BucketPlan.from_settings(b)
    problems = []
    if b.enable_bucket and b.bucket_reso_steps % 64:
        problems.append(Problem.at("buckets.bucket_reso_steps", "error", (
            f"bucket_reso_steps is {b.bucket_reso_steps}: SD1.5 needs a multiple of 64 (Kohya's trainer refuses it too); set it to 64"
        )))
    if b.enable_bucket and not b.bucket_no_upscale and plan.max_size < max(w, h):
        problems.append(Problem.at("buckets.max_bucket_reso", "error", (
            f"max_bucket_reso ({b.max_bucket_reso}) is smaller than the resolution {w}x{h}: raise it to at least {max(w, h)}"
        )))
    if b.enable_bucket and not b.bucket_no_upscale and plan.min_size > min(w, h):
        problems.append(Problem.at("buckets.min_bucket_reso", "error", (
            f"min_bucket_reso ({b.min_bucket_reso}) is larger than the resolution {w}x{h}: lower it to at most {min(w, h)}"
        )))
    if w % b.bucket_reso_steps or h % b.bucket_reso_steps:
        problems.append(Problem.at("buckets.max_resolution", "warning", (
            f"{w}x{h} is not a multiple of bucket_reso_steps ({b.bucket_reso_steps}): images will be cropped to the nearest bucket"
        )))
    return problems


def _check_concept(concept: Concept, config: TrainingConfig, plan: BucketPlan, report: DatasetReport) -> None:
    ext = config.dataset.caption_extension
    uncaptioned: list[Path] = []
    multiline: list[Path] = []
    for image in concept.images:
        checked = _check_image(image, concept, config, plan, report.problems)
        if checked is None:
            report.skipped.append(image)
            continue
        sample, extra_lines = checked
        report.samples.append(sample)
        if sample.caption_is_fallback:
            uncaptioned.append(image)
        elif extra_lines:
            multiline.append(image)
    report.uncaptioned += uncaptioned
    report.problems += _duplicate_stems(concept)
    if uncaptioned:
        report.problems.append(_uncaptioned_problem(concept, uncaptioned, ext))
    if multiline:
        report.problems.append(Problem.at(concept.path, "info", (
            f"{len(multiline)} caption file(s) have more than one line; only the first line is used: {_names(multiline)}"
        )))


def _check_image(
    image: Path, concept: Concept, config: TrainingConfig, plan: BucketPlan, problems: list[Problem]
) -> tuple[TrainSample, bool] | None:
    """The image's sample and whether its caption file has extra lines; None (and a problem) when unusable."""
    try:
        info = probe_image(image)
    except ImageError as exc:
        problems.append(Problem.at(image, "warning", f"skipped: {exc.reason}"))
        return None
    if info.high_bit_depth:
        problems.append(Problem.at(image, "warning", f"{info.mode} (more than 8 bits per channel) image: scaled to 8 bits for training"))
    w, h = info.size
    step = config.buckets.bucket_reso_steps
    choice = plan.select(w, h) if min(w, h) >= step else None
    if choice is None:
        refuse = config.dataset.undersized_images == "refuse"
        problems.append(Problem.at(image, "error" if refuse else "warning", (
            f"{'refused' if refuse else 'skipped'}: {w}x{h} is too small for a {step} px bucket step at {plan.resolution[0]}x{plan.resolution[1]}; "
            "use a larger image or delete it" + ("" if refuse else " (dataset.undersized_images = refuse makes this an error)")
        )))
        return None
    ext = config.dataset.caption_extension
    try:
        text = read_caption_file(image, ext)
    except CaptionError as exc:
        problems.append(Problem.at(exc.path, "error", exc.reason))
        text = CaptionText(None, None, False)
    caption = text.text
    sample = TrainSample(
        image_path=image,
        caption=caption if caption is not None else fallback_caption(concept.name),
        caption_is_fallback=caption is None,
        concept_dir=concept.path,
        repeats=concept.repeats,
        is_reg=concept.is_reg,
        size=(w, h),
        bucket=choice.bucket,
        resized=choice.resized,
    )
    return sample, text.extra_lines


def _duplicate_stems(concept: Concept) -> list[Problem]:
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for image in concept.images:
        by_stem[image.stem].append(image)
    return [
        Problem.at(paths[0], "warning", (
            f"{' and '.join(p.name for p in paths)} share the name `{stem}` and so one caption file: rename or delete one of them"
        ))
        for stem, paths in by_stem.items()
        if len(paths) > 1
    ]


def _uncaptioned_problem(concept: Concept, images: list[Path], ext: str) -> Problem:
    fallback = fallback_caption(concept.name)
    uses = f'the folder name "{fallback}" as caption' if fallback else "an EMPTY caption (the folder has no name part)"
    hint = ""
    others = sorted(s for s in concept.other_suffixes & {".txt", ".caption"} if s != ext.lower())
    if others:
        hint = f"; this folder has {others[0]} files: set dataset.caption_extension to {others[0]} if those are the captions"
    return Problem.at(concept.path, "warning", (
        f"{len(images)} image(s) have no caption ({ext} file missing or empty) and train with {uses}: {_names(images)}{hint}"
    ))


def _names(paths: list[Path], limit: int = 10) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
