"""Build a Kohya-style project from a folder of images: `image/<repeats>_<name>/`, `log/`, `model/`.

Like Kohya's "Dataset preparation" tool, but safe: images and captions are copied (never moved) into a
staging folder that is renamed into place only when everything has been copied, source and destination may
not be the same or nested, and an existing concept folder is never written into.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from loratrainer.data.folders import is_junk_name, parse_concept_name
from loratrainer.data.images import is_image_name
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "prepare.left_out.not_image": "not an image type training reads (png, jpg, jpeg, webp, bmp)",
    "prepare.left_out.animated": "an animation (GIF): training reads still images only (png, jpg, jpeg, webp, bmp); save a frame as PNG to use it",
    "prepare.left_out.orphan_caption": "a caption file without an image of the same name",
    "prepare.left_out.folder": "a folder: only the files directly in the chosen folder are copied",
    "prepare.bad_name": "{option} {name!r}: use a plain name without / \\ : * ? \" < > | (e.g. \"mydog\" or \"zoë dog\")",
    "prepare.hidden_name": "{option} {name!r}: must not start with '.' (such folders are hidden and skipped)",
    "prepare.repeats": "--repeats and --reg-repeats must be at least 1",
    "prepare.cannot_create": "cannot create {path}: {reason}",
    "prepare.not_a_folder": "{label} {path}: not an existing folder",
    "prepare.same_folder": "{label} and DEST are the same folder ({src}): choose a new, separate project folder",
    "prepare.dest_inside": "DEST {dest} is inside {label} {src}: choose a project folder outside the image folder",
    "prepare.src_inside": "{label} {src} is inside DEST {dest}: choose a project folder that does not contain the images",
    "prepare.exists": "{target} already exists: nothing was changed (choose another --name, or remove that folder yourself)",
    "prepare.concept_exists": "{entry} already holds the concept {name!r}: nothing was changed (choose another --name)",
    "prepare.file_in_the_way": "{path} is a file, but the project needs a folder there: nothing was changed (choose another DEST)",
    "prepare.no_images": "{folder}: no images (png, jpg, jpeg, webp, bmp) directly in this folder",
    "prepare.appeared": "{target} appeared while copying: nothing was changed",
    "prepare.copy_failed": "copying failed ({detail}); nothing was created",
})

_FORBIDDEN_NAME_CHARS = '/\\:*?"<>|\0'
_CAPTION_SUFFIXES = {".txt", ".caption"}


@dataclass
class PreparedFolder:
    """One concept folder that prepare created."""

    path: Path
    repeats: int
    images: int
    captions: int
    left_out: list[tuple[Path, Msg]] = field(default_factory=list)  # what was in the source and not copied, and why


@dataclass
class PrepareResult:
    project: Path
    train: PreparedFolder
    reg: PreparedFolder | None
    created: list[Path] = field(default_factory=list)  # every folder created, in creation order
    repeats_suggested: bool = False


def suggest_repeats(num_images: int) -> int:
    """The seed tutorial's rule: about 150 repeats for ~10 images, 100 for 20 or more; linear in between.

    Fewer than 10 images keep 150 (more repeats would only overfit the few images faster). In between, 5 fewer
    repeats per extra image (12 -> 140, 15 -> 125), so samples per epoch stay near the tutorial's 1500-2000.
    """
    if num_images <= 10:
        return 150
    if num_images >= 20:
        return 100
    return 150 - 5 * (num_images - 10)


def check_name(name: str, option: str = "--name") -> str:
    """A concept name becomes a folder name: no separators, no '..', not empty (spaces and any script are fine)."""
    stripped = name.strip()
    if not stripped or stripped in {".", ".."} or any(c in stripped for c in _FORBIDDEN_NAME_CHARS):
        raise UserError(Msg.of("prepare.bad_name", option=option, name=name))
    if stripped.startswith("."):
        raise UserError(Msg.of("prepare.hidden_name", option=option, name=name))
    return stripped


def prepare_project(
    src: str | Path,
    dest: str | Path,
    name: str,
    repeats: int | None = None,
    reg_src: str | Path | None = None,
    reg_repeats: int = 1,
    *,
    class_name: str | None = None,
) -> PrepareResult:
    """Kohya's folder tool: image/<repeats>_<name> <class>/ and reg/<reg_repeats>_<class>/ (class optional).

    The reg folder is named after the class, so uncaptioned reg images train as "dog", not as the trigger
    name: reg images under the trigger name would teach it to mean any dog.
    """
    name = check_name(name)
    class_name = check_name(class_name, "--class") if class_name else None
    src_dir, dest_dir = _existing_dir(src, "SRC"), Path(dest).expanduser().resolve()
    _refuse_overlap(src_dir, dest_dir, "SRC")
    reg_dir = _existing_dir(reg_src, "--reg") if reg_src else None
    if reg_dir is not None:
        _refuse_overlap(reg_dir, dest_dir, "--reg")
    train_images, train_captions, train_left = _sorted_files(src_dir)
    train_files = (train_images, train_captions)
    reg_sorted = _sorted_files(reg_dir) if reg_dir is not None else None
    reg_files = reg_sorted[:2] if reg_sorted is not None else None
    suggested = repeats is None
    repeats = suggest_repeats(len(train_files[0])) if repeats is None else repeats
    if repeats < 1 or reg_repeats < 1:
        raise UserError(Msg.of("prepare.repeats"))
    concept = f"{name} {class_name}" if class_name else name
    targets = [(dest_dir / "image" / f"{repeats}_{concept}", train_files)]
    if reg_files is not None:
        targets.append((dest_dir / "reg" / f"{reg_repeats}_{class_name or name}", reg_files))
    for target, _ in targets:
        _refuse_existing(target, target.name.split("_", 1)[1])
    folders = [dest_dir, dest_dir / "log", dest_dir / "model"] + [t.parent for t, _ in targets]
    _refuse_files_in_the_way(folders)
    created = [d for d in folders[:3] if not d.exists()]
    try:
        for folder in folders[1:3]:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(Msg.of("prepare.cannot_create", path=exc.filename, reason=exc.strerror)) from None
    prepared = _copy_all(targets)
    prepared[0].left_out = train_left
    if reg_sorted is not None:
        prepared[1].left_out = reg_sorted[2]
    created += [p.path for p in prepared]
    return PrepareResult(dest_dir, prepared[0], prepared[1] if len(prepared) > 1 else None, created, suggested)


def _existing_dir(path: str | Path, label: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(Msg.of("prepare.not_a_folder", label=label, path=str(p)))
    return p.resolve()


def _refuse_overlap(src: Path, dest: Path, label: str) -> None:
    if src == dest:
        raise UserError(Msg.of("prepare.same_folder", label=label, src=str(src)))
    if dest.is_relative_to(src):
        raise UserError(Msg.of("prepare.dest_inside", dest=str(dest), label=label, src=str(src)))
    if src.is_relative_to(dest):
        raise UserError(Msg.of("prepare.src_inside", label=label, src=str(src), dest=str(dest)))


def _refuse_existing(target: Path, name: str) -> None:
    if target.exists():
        raise UserError(Msg.of("prepare.exists", target=str(target)))
    if target.parent.is_dir():
        for entry in target.parent.iterdir():
            parsed = parse_concept_name(entry.name)
            if entry.is_dir() and parsed and parsed[1] == name:
                raise UserError(Msg.of("prepare.concept_exists", entry=str(entry), name=name))


def _refuse_files_in_the_way(folders: list[Path]) -> None:
    """Before anything is created: each folder we need must be a folder or not exist yet (nor any parent be a file)."""
    for folder in folders:
        for p in [folder, *folder.parents]:
            if p.exists() and not p.is_dir():
                raise UserError(Msg.of("prepare.file_in_the_way", path=str(p)))


def _sorted_files(folder: Path) -> tuple[list[Path], list[Path], list[tuple[Path, Msg]]]:
    """(images, their caption files, what is left out and why) directly in `folder`; junk (hidden files,
    Thumbs.db) is left out silently (issue 22: a GIF used to vanish without a word)."""
    everything = sorted(p for p in folder.iterdir() if not is_junk_name(p.name))
    entries = [p for p in everything if p.is_file()]
    images = [p for p in entries if is_image_name(p.name)]
    if not images:
        raise UserError(Msg.of("prepare.no_images", folder=str(folder)))
    stems = {p.stem for p in images}
    captions = [p for p in entries if p.suffix.lower() in _CAPTION_SUFFIXES and p.stem in stems]
    left_out: list[tuple[Path, Msg]] = []
    for p in everything:
        if p.is_dir():
            left_out.append((p, Msg.of("prepare.left_out.folder")))
        elif p in images or p in captions:
            continue
        elif p.suffix.lower() in _CAPTION_SUFFIXES:
            left_out.append((p, Msg.of("prepare.left_out.orphan_caption")))
        elif p.suffix.lower() == ".gif":
            left_out.append((p, Msg.of("prepare.left_out.animated")))
        else:
            left_out.append((p, Msg.of("prepare.left_out.not_image")))
    return images, captions, left_out


def _copy_all(targets: list[tuple[Path, tuple[list[Path], list[Path]]]]) -> list[PreparedFolder]:
    """Copy each set into a staging folder beside its target, then rename them all into place."""
    staged: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for target, (images, captions) in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            # mkdir (not mkdtemp) so the folder gets the user's usual permissions, not 0700
            staging = target.parent / f".staging-{target.name}-{secrets.token_hex(4)}"
            staging.mkdir()
            staged.append((staging, target))
            for f in images + captions:
                shutil.copy2(f, staging / f.name)
        for staging, target in staged:
            if target.exists():  # appeared meanwhile: never merge into it
                raise UserError(Msg.of("prepare.appeared", target=str(target)))
            os.rename(staging, target)
            done.append(target)
    except BaseException as exc:
        for target in done:  # only folders we renamed into place a moment ago, holding copies
            shutil.rmtree(target, ignore_errors=True)
        for staging, _ in staged:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(Msg.of("prepare.copy_failed", detail=str(exc))) from exc
        raise
    return [PreparedFolder(t, int(t.name.split("_", 1)[0]), len(i), len(c)) for t, (i, c) in targets]
