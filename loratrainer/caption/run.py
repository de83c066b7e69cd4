"""Caption a folder: decide what to caption, back up what will be replaced, run a captioner, write atomically.

The one entry point for the CLI and the GUI tab: `caption_folder(options, captioner_options, progress=...,
cancel=...) -> CaptionReport`. Refusals (duplicate stems, a missing folder, a model that cannot be loaded)
are UserErrors raised before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from loratrainer.caption import folder as folders
from loratrainer.caption import writer
from loratrainer.caption.base import Captioner, CaptionerOptions, FixedTextOptions, TaggerOptions
from loratrainer.caption.captioners import make_captioner
from loratrainer.data.images import ImageError, load_image
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "captioning.summary.written": "{count} captions written",
    "captioning.summary.skipped_existing": "{count} skipped: caption exists (overwrite to replace them)",
    "captioning.summary.backed_up": "old captions backed up to {folder}",
    "captioning.summary.failed": "{count} skipped: not captioned",
    "captioning.summary.cancelled": "cancelled: the remaining images were not captioned",
    "captioning.folder_missing": "choose the image folder first",
    "captioning.batch_size": "batch size must be at least 1",
    "captioning.fixed_empty": "the fixed text is empty: type the caption to write",
    "captioning.out_of_memory": (
        "out of GPU memory captioning {count} images at once: lower the batch size and run again "
        "({written} captions written so far are kept and will be skipped)"
    ),
    "captioning.no_text": "the captioner produced no text (e.g. no tag over the threshold)",
})

ProgressFn = Callable[[int, int], None]  # (images done, images to caption)
CancelFn = Callable[[], bool]  # True: stop after the current batch (e.g. threading.Event().is_set)


@dataclass(frozen=True)
class CaptionRunOptions:
    """What every captioner shares: which images, where captions go, what to add, when to overwrite."""

    folder: Path
    caption_extension: str = ".txt"
    prefix: str = ""
    postfix: str = ""
    overwrite: bool = False  # replace existing captions, after copying them to <folder>/.caption-backups/<time>/
    recursive: bool = False
    batch_size: int = 1
    background: str = "#ffffff"  # transparent pixels are composited onto this (docs/reliability.md row 4)

    def __post_init__(self) -> None:
        if not str(self.folder).strip():  # an empty box, not "." (Path("") would silently mean the current folder)
            raise UserError(Msg.of("captioning.folder_missing"))
        object.__setattr__(self, "folder", Path(self.folder).expanduser())
        object.__setattr__(self, "caption_extension", writer.normalize_extension(self.caption_extension))
        if self.batch_size < 1:
            raise UserError(Msg.of("captioning.batch_size"))


@dataclass(frozen=True)
class CaptionPlan:
    """What a run would do, known before any model is loaded (the GUI can show it before Start)."""

    images: list[Path]  # to caption, in order
    existing: dict[Path, Path]  # image -> its caption file; skipped unless overwriting
    duplicates: list[list[Path]]  # stems shared by several images: the run refuses while there are any


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str | Msg  # str() is the English the CLI prints; the GUI says a Msg in its language


@dataclass
class CaptionReport:
    written: list[Path] = field(default_factory=list)  # caption files
    skipped_existing: list[Path] = field(default_factory=list)  # images whose caption was kept
    failed: list[Skipped] = field(default_factory=list)  # unreadable images, empty results
    backup_dir: Path | None = None
    cancelled: bool = False

    def summary(self) -> list[str]:
        """Lines for people: counts first, then every image that was not captioned and why."""
        said = [Msg.of("captioning.summary.written", count=len(self.written))]
        if self.skipped_existing:
            said.append(Msg.of("captioning.summary.skipped_existing", count=len(self.skipped_existing)))
        if self.backup_dir:
            said.append(Msg.of("captioning.summary.backed_up", folder=str(self.backup_dir)))
        if self.failed:
            said.append(Msg.of("captioning.summary.failed", count=len(self.failed)))
        lines = [str(m) for m in said] + [f"  {s.path}: {s.reason}" for s in self.failed]  # English: the CLI's
        if self.cancelled:
            lines.append(str(Msg.of("captioning.summary.cancelled")))
        return lines


def plan_captions(options: CaptionRunOptions) -> CaptionPlan:
    images = folders.find_images(options.folder, options.recursive)
    existing: dict[Path, Path] = {}
    for image in images:
        found = writer.existing_caption(image, options.caption_extension)
        if found is not None:
            existing[image] = found
    todo = images if options.overwrite else [i for i in images if i not in existing]
    return CaptionPlan(todo, existing, folders.duplicate_stems(images))


def caption_folder(
    options: CaptionRunOptions,
    captioner_options: CaptionerOptions,
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    captioner: Captioner | None = None,
    loading: Callable[[CaptionerOptions], None] | None = None,
) -> CaptionReport:
    """Caption every image of the folder that needs it; `captioner` reuses an already loaded model.

    `loading(options)` is called just before a model is loaded (not when there is nothing to caption), so a
    caller can say that this may take a while."""
    fixed = isinstance(captioner_options, FixedTextOptions) and captioner is None
    if fixed and isinstance(captioner_options, FixedTextOptions) and not writer.compose(
            options.prefix, captioner_options.text, options.postfix):  # (the second isinstance tells mypy)
        raise UserError(Msg.of("captioning.fixed_empty"))
    plan = plan_captions(options)
    if plan.duplicates:
        raise folders.DuplicateStemsError(plan.duplicates)
    report = CaptionReport()
    report.skipped_existing = [] if options.overwrite else sorted(plan.existing)
    if not plan.images:
        return report
    # Loaded before the backup, so a model that cannot be loaded leaves the folder exactly as it was.
    if captioner is None:
        if loading is not None:
            loading(captioner_options)
        captioner = make_captioner(captioner_options)
    if options.overwrite:
        replaced = [plan.existing[i] for i in plan.images if i in plan.existing]
        report.backup_dir = writer.back_up(options.folder, replaced)
    separator = captioner_options.tag_separator if isinstance(captioner_options, TaggerOptions) else " "
    total, done = len(plan.images), 0
    if progress is not None:
        progress(0, total)  # the model is loaded: the bar can start
    for start in range(0, total, options.batch_size):
        if cancel is not None and cancel():
            report.cancelled = True
            break
        batch = plan.images[start : start + options.batch_size]
        _caption_batch(batch, captioner, options, plan, separator, report)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return report


def _caption_batch(
    batch: list[Path],
    captioner: Captioner,
    options: CaptionRunOptions,
    plan: CaptionPlan,
    separator: str,
    report: CaptionReport,
) -> None:
    loaded: list[tuple[Path, Image.Image]] = []
    for path in batch:
        try:
            loaded.append((path, load_image(path, background=options.background)))
        except ImageError as exc:
            report.failed.append(Skipped(path, exc.reason))
    if not loaded:
        return
    try:
        texts = captioner.caption([image for _, image in loaded])
    except Exception as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
            raise
        raise UserError(Msg.of("captioning.out_of_memory", count=len(batch), written=len(report.written))) from exc
    for (path, _), text in zip(loaded, texts, strict=True):  # one caption per image
        caption = writer.compose(options.prefix, text, options.postfix, separator)
        if not caption:
            report.failed.append(Skipped(path, Msg.of("captioning.no_text")))
            continue
        target = plan.existing.get(path) or writer.caption_path(path, options.caption_extension)
        report.written.append(writer.write_caption(target, caption))
