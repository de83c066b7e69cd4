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
from loratrainer.data.dataset_config import DatasetConfig, apply_settings, read_dataset_config
from loratrainer.data.folders import Concept, list_concept, scan_data_dir, shown_names
from loratrainer.errors import UserError
from loratrainer.data.images import ImageError, probe_image
from loratrainer.data.masks import mask_problems
from loratrainer.data.problems import Problem
from loratrainer.data.report import DatasetReport
from loratrainer.data.samples import TrainSample
from loratrainer.data.steps import bucket_sizes, count_steps
from loratrainer.data.validation import split_validation, validation_seed
from loratrainer.messages import Label, Msg, define

define({
    "check.failed": "the dataset check failed:\n{report}",
    "check.no_folder": "no image folder chosen: set it to the parent of your <repeats>_<name> folders",
    "check.no_usable_images": "no usable training images: fix or add images (see the lines above)",
    "check.reso_steps": "bucket_reso_steps is {steps}: {family} needs a multiple of {multiple} (Kohya's trainer refuses it too); set it to {multiple}",
    "check.max_bucket": "max_bucket_reso ({value}) is smaller than the resolution {w}x{h}: raise it to at least {need}",
    "check.min_bucket": "min_bucket_reso ({value}) is larger than the resolution {w}x{h}: lower it to at most {need}",
    "check.resolution_below_min": (
        "{resolution} {w}x{h} is below {min_reso} ({value}), so images would be dropped: raise {resolution} "
        "(SD1.5 trains at 512,512) or lower {min_reso}"
    ),
    "check.resolution_too_small_for_image": (
        "skipped: {w}x{h} does not fit any bucket at {resolution} {rw}x{rh} (its shorter side would be under "
        "{step} px): raise {resolution}"
    ),
    # What happens, as the bucket preview shows it (issue 22: "cropped to the nearest bucket" while the preview
    # listed that very size): buckets.py rounds every bucket side down to a multiple of the step.
    "check.not_multiple": (
        "{w}x{h} is not a multiple of bucket_reso_steps ({steps}): every bucket side is rounded down to a multiple of "
        "{steps} (the bucket preview lists the sizes images train at, e.g. {bw}x{bh}), so nothing trains at {w}x{h}; "
        "set {resolution} to a multiple of {steps} such as {nw},{nh} to train at that size"
    ),
    "check.not_multiple_no_buckets": (
        "{w}x{h} is not a multiple of {steps}: without buckets every image is resized and cropped to exactly {w}x{h}; "
        "SD1.5 works best at multiples of {steps} such as {nw},{nh}"
    ),
    "check.multiline": "{n} caption file(s) have more than one line; only the first line is used: {names}",
    "check.skipped": "skipped: {reason}",
    "check.high_bit": "{mode} (more than 8 bits per channel) image: scaled to 8 bits for training",
    "check.too_small_refused": "refused: {w}x{h} is too small for a {step} px bucket step at {rw}x{rh}; use a larger image or delete it",
    "check.too_small_skipped": (
        "skipped: {w}x{h} is too small for a {step} px bucket step at {rw}x{rh}; use a larger image or delete it"
        " (dataset.undersized_images = refuse makes this an error)"
    ),
    "check.far_smaller": (
        "{w}x{h} is far smaller than the training resolution {rw}x{rh} (under a quarter of its pixels): the LoRA "
        "learns little detail from it and may turn out blurry; use a larger copy if you have one"
    ),
    "check.duplicate_stem": "{names} share the name `{stem}` and so one caption file: rename or delete one of them",
    "check.uncaptioned": "{n} image(s) have no caption ({ext} file missing or empty) and train with {uses}: {names}{hint}",
    "check.uses_folder_name": 'the folder name "{caption}" as caption',
    "check.uses_empty": "an EMPTY caption (the folder has no name part)",
    "dataset_config.no_folder": "the image_dir of {where} does not exist or is not a folder: check the path (a relative path is read from the .toml's folder)",
    "check.other_captions": "; this folder has {suffix} files: set dataset.caption_extension to {suffix} if those are the captions",
})


def check_dataset(config: TrainingConfig, num_processes: int | None = None) -> DatasetReport:
    """Everything about the dataset that can be known before training; `report.ok` says whether to start."""
    plan: DatasetConfig | None = None
    if config.folders.dataset_config.strip():
        try:
            plan = read_dataset_config(config.folders.dataset_config, config)
            config = apply_settings(config, plan)  # its resolution, batch size, buckets: what the trainer applies too
        except UserError as exc:
            problem = Problem.at(exc.path or "folders.dataset_config", "error", exc.reason)
            return DatasetReport([problem], [], count_steps([], 1), {})
    problems = _settings_problems(config)
    concepts: list[Concept] = []
    folders = config.folders
    if plan is not None:
        concepts, more = _subset_concepts(plan, folders)
        problems += more
    elif not folders.train_data_dir.strip():
        problems.append(Problem.at("folders.train_data_dir", "error", Msg.of("check.no_folder")))
    else:
        scan = scan_data_dir(folders.train_data_dir, config.dataset.caption_extension)
        concepts += scan.concepts
        problems += scan.problems
    if folders.reg_data_dir.strip() and plan is None:
        scan = scan_data_dir(folders.reg_data_dir, config.dataset.caption_extension, is_reg=True)
        concepts += scan.concepts
        problems += scan.problems
    buckets = BucketPlan.from_settings(config.buckets)
    report = DatasetReport(problems, [], count_steps([], 1), {})
    for concept in concepts:
        _check_concept(concept, config, buckets, report)
    _hold_out_validation(config, buckets, report)
    if any(not c.is_reg for c in concepts) and report.images == 0:
        where = folders.dataset_config if plan is not None else folders.train_data_dir
        problems.append(Problem.at(where, "error", Msg.of("check.no_usable_images")))
    o = config.training
    report.steps = count_steps(
        report.samples,
        o.train_batch_size,
        o.gradient_accumulation_steps,
        num_processes or config.launch.num_processes,
        o.epoch,
        o.max_train_steps,
    )
    report.buckets = bucket_sizes(report.samples)
    problems += mask_problems(config, report.samples)  # masked_loss: every image's mask, at its image's size
    return report


def _subset_concepts(plan: DatasetConfig, folders) -> tuple[list[Concept], list[Problem]]:
    """A dataset config's subsets as concepts: image_dir holds the images itself (no <repeats>_<name> folders)."""
    problems: list[Problem] = []
    if folders.train_data_dir.strip() or folders.reg_data_dir.strip():
        problems.append(Problem.at(plan.path, "info", Msg.of("dataset_config.ignored_folders")))
    problems += [Problem.at(plan.path, "warning", Msg.of("dataset_config.duplicate", where=w)) for w in plan.duplicates]
    concepts = []
    for subset in plan.subsets:
        concept = Concept(subset.image_dir, subset.num_repeats, subset.class_tokens or "", subset.is_reg,
                          caption_extension=subset.caption_extension, group=subset.dataset)
        if not subset.image_dir.is_dir():
            problems.append(Problem.at(subset.image_dir, "error", Msg.of("dataset_config.no_folder", where=subset.where)))
            continue
        problems += list_concept(concept, subset.caption_extension)
        concepts.append(concept)
    return concepts, problems


def _hold_out_validation(config: TrainingConfig, plan: BucketPlan, report: DatasetReport) -> None:
    """validation_split's share of each training folder, and the validation folder's images, leave the training
    samples (so the step count counts only training images) for report.validation (data/validation.py)."""
    report.samples, report.validation = split_validation(report.samples, config.training.validation_split, validation_seed(config))
    folder = config.folders.validation_data_dir
    if folder.strip():
        scan = scan_data_dir(folder, config.dataset.caption_extension)
        report.problems += scan.problems
        held = DatasetReport(report.problems, [], count_steps([], 1), {})
        for concept in scan.concepts:
            _check_concept(concept, config, plan, held)
        report.validation += held.samples
        report.skipped += held.skipped


def _settings_problems(config: TrainingConfig) -> list[Problem]:
    """sd-scripts' bucket asserts for SD1.5 (train_network's verify_bucket_reso_steps(64), and the min/max checks),
    as errors naming the setting; min/max only matter without bucket_no_upscale, where buckets are predefined."""
    b = config.buckets
    w, h = b.resolution
    plan = BucketPlan.from_settings(b)
    problems = []
    # train_network.py verify_bucket_reso_steps(64), sdxl_train_network.py (32); model_family is the model's own
    # once the launcher has read it (launch.input_checks.resolve_model_family), "auto" = SD1.5's rule
    family, multiple = ("SDXL", 32) if config.model.model_family == "sdxl" else ("SD1.5", 64)
    if b.enable_bucket and b.bucket_reso_steps % multiple:
        problems.append(Problem.at("buckets.bucket_reso_steps", "error", Msg.of("check.reso_steps", steps=b.bucket_reso_steps, family=family, multiple=multiple)))
    if b.enable_bucket and not b.bucket_no_upscale and plan.max_size < max(w, h):
        problems.append(Problem.at("buckets.max_bucket_reso", "error", Msg.of("check.max_bucket", value=b.max_bucket_reso, w=w, h=h, need=max(w, h))))
    if b.enable_bucket and not b.bucket_no_upscale and plan.min_size > min(w, h):
        problems.append(Problem.at("buckets.min_bucket_reso", "error", Msg.of("check.min_bucket", value=b.min_bucket_reso, w=w, h=h, need=min(w, h))))
    if b.enable_bucket and b.bucket_no_upscale and min(w, h) < b.min_bucket_reso:
        # Kohya ignores min_bucket_reso without upscaling, but a resolution below it is a typo (64 for 640) that
        # would drop every image of another shape
        problems.append(Problem.at("buckets.max_resolution", "error", Msg.of(
            "check.resolution_below_min", w=w, h=h, value=b.min_bucket_reso,
            resolution=Label("buckets.max_resolution"), min_reso=Label("buckets.min_bucket_reso"))))
    if w % b.bucket_reso_steps or h % b.bucket_reso_steps:
        steps = b.bucket_reso_steps
        nw, nh = (max(steps, round(x / steps) * steps) for x in (w, h))
        if not b.enable_bucket:
            problems.append(Problem.at("buckets.max_resolution", "warning", Msg.of("check.not_multiple_no_buckets", w=w, h=h, steps=steps, nw=nw, nh=nh)))
        else:
            # the bucket an image of exactly this shape gets (the square one for a square resolution)
            choice = plan.select(w, h) if min(w, h) >= steps else None
            bw, bh = choice.bucket if choice else (w - w % steps, h - h % steps)
            problems.append(Problem.at("buckets.max_resolution", "warning", Msg.of(
                "check.not_multiple", w=w, h=h, steps=steps, bw=bw, bh=bh, nw=nw, nh=nh, resolution=Label("buckets.max_resolution"))))
    return problems


def _check_concept(concept: Concept, config: TrainingConfig, plan: BucketPlan, report: DatasetReport) -> None:
    ext = concept.caption_extension or config.dataset.caption_extension
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
        report.problems.append(Problem.at(concept.path, "info", Msg.of("check.multiline", n=len(multiline), names=_names(multiline))))


def _check_image(
    image: Path, concept: Concept, config: TrainingConfig, plan: BucketPlan, problems: list[Problem]
) -> tuple[TrainSample, bool] | None:
    """The image's sample and whether its caption file has extra lines; None (and a problem) when unusable."""
    try:
        info = probe_image(image)
    except ImageError as exc:
        problems.append(Problem.at(image, "warning", Msg.of("check.skipped", reason=exc.reason)))
        return None
    if info.high_bit_depth:
        problems.append(Problem.at(image, "warning", Msg.of("check.high_bit", mode=info.mode)))
    w, h = info.size
    step = config.buckets.bucket_reso_steps
    choice = plan.select(w, h) if min(w, h) >= step else None
    if choice is None and min(w, h) >= step and plan.max_area < w * h:
        # the image is fine; the training area is too small for its aspect ratio (the real cause, not its size)
        rw, rh = plan.resolution
        problems.append(Problem.at(image, "warning", Msg.of(
            "check.resolution_too_small_for_image", w=w, h=h, step=step, rw=rw, rh=rh, resolution=Label("buckets.max_resolution"))))
        return None
    if choice is None:
        refuse = config.dataset.undersized_images == "refuse"
        code = "check.too_small_refused" if refuse else "check.too_small_skipped"
        rw, rh = plan.resolution
        problems.append(Problem.at(image, "error" if refuse else "warning", Msg.of(code, w=w, h=h, step=step, rw=rw, rh=rh)))
        return None
    rw, rh = plan.resolution
    if 4 * w * h <= rw * rh:  # named, not skipped: it trains, enlarged (or at its own size with bucket_no_upscale)
        problems.append(Problem.at(image, "info", Msg.of("check.far_smaller", w=w, h=h, rw=rw, rh=rh)))
    ext = concept.caption_extension or config.dataset.caption_extension
    try:
        text = read_caption_file(image, ext)
    except CaptionError as exc:
        problems.append(Problem.at(exc.path or image, "error", exc.reason))
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
        group=concept.group,
    )
    return sample, text.extra_lines


def _duplicate_stems(concept: Concept) -> list[Problem]:
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for image in concept.images:
        by_stem[image.stem].append(image)
    return [
        Problem.at(paths[0], "warning", Msg.of("check.duplicate_stem", names=", ".join(p.name for p in paths), stem=stem))
        for stem, paths in by_stem.items()
        if len(paths) > 1
    ]


def _uncaptioned_problem(concept: Concept, images: list[Path], ext: str) -> Problem:
    fallback = fallback_caption(concept.name)
    uses = Msg.of("check.uses_folder_name", caption=fallback) if fallback else Msg.of("check.uses_empty")
    hint: str | Msg = ""
    others = sorted(s for s in concept.other_suffixes & {".txt", ".caption"} if s != ext.lower())
    if others:
        hint = Msg.of("check.other_captions", suffix=others[0])
    return Problem.at(concept.path, "warning", Msg.of("check.uncaptioned", n=len(images), ext=ext, uses=uses, names=_names(images), hint=hint))


def _names(paths: list[Path], limit: int = 10) -> str | Msg:
    return shown_names([p.name for p in paths], limit)
