"""The Kohya folder convention: train_data_dir holds concept folders named `<repeats>_<name>`.

docs/kohya-compat.md section 1. We read the same layout as Kohya, and where Kohya silently ignores or guesses
we say so: folders without a repeats prefix are listed, `0_x` is an error, a concept folder chosen instead
of its parent is recognised, and junk files (macOS `._*`, `.DS_Store`, `Thumbs.db`, backups) are skipped
with one line instead of being counted or crashing the loader.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from loratrainer.data.images import is_image_name
from loratrainer.data.problems import Problem
from loratrainer.messages import Msg, define

# Kohya splits at the first "_" and calls int() on the prefix; a name part may contain spaces and "_".
_CONCEPT = re.compile(r"^(-?\d+)(?:_(.*))?$", re.DOTALL)
_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db"}
# Files that belong in a concept folder besides images and captions: Kohya's latent caches.
_EXPECTED_SUFFIXES = {".npz"}


@dataclass
class Concept:
    """One `<repeats>_<name>` folder and what it holds."""

    path: Path
    repeats: int
    name: str  # the class tokens; the caption of images without a caption file
    is_reg: bool
    images: list[Path] = field(default_factory=list)  # sorted by name
    other_suffixes: set[str] = field(default_factory=set)  # lower-case suffixes of non-image files (captions...)
    caption_extension: str | None = None  # a dataset config subset's own; None: the setting's
    group: int = 0  # its [[datasets]] in a dataset config (loratrainer/data/dataset_config.py)


@dataclass
class FolderScan:
    concepts: list[Concept]
    problems: list[Problem]


def parse_concept_name(folder_name: str) -> tuple[int, str] | None:
    """'10_my dog' -> (10, 'my dog'); None when the name has no integer prefix (Kohya ignores the folder)."""
    m = _CONCEPT.match(folder_name)
    if not m:
        return None
    return int(m.group(1)), m.group(2) or ""


def is_junk_name(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES or name.endswith("~")


define({
    "folder.missing": "{role} does not exist: check the path",
    "folder.is_file": "{role} is a file, not a folder: choose the folder that holds the concept folders",
    "folder.no_prefix": "ignored: no `<repeats>_` prefix; rename it to e.g. `10_{name}` to train on it",
    "folder.zero_repeats": "repeats is {repeats}: a folder needs at least 1 repeat (rename it to e.g. `1_{name}`, or move it out)",
    "folder.is_concept": "this folder holds images itself: it is a concept folder; choose its parent ({parent}) as {role}",
    "folder.loose_only": (
        "this folder holds images itself; {role} must be the parent of concept folders named <repeats>_<name>: "
        "move the images into e.g. {target} (or use `loratrainer prepare`)"
    ),
    "folder.loose_images": (
        "{n} image(s) directly in this folder are not trained: only concept folders (<repeats>_<name>) count; move them into one"
    ),
    "folder.no_concepts": "no concept folders: {role} must hold folders named <repeats>_<name> (e.g. 10_mydog) with the training images",
    "folder.no_concepts_reg": (
        "no concept folders: {role} must hold folders named <repeats>_<name> (e.g. 10_mydog) with the regularisation images"
    ),
    "folder.ignored_files": "ignored {n} file(s) that are not training images: {names}",
    "folder.subfolders": "{n} subfolder(s) are not searched: only images directly in a concept folder count",
    "folder.no_images": "no images (png, jpg, jpeg, webp, bmp) in this concept folder",
    "list.more": "{names} and {more} more",
})


def shown_names(names: list[str], limit: int) -> "str | Msg":
    """`a, b, c` or `a, b and 3 more` (the `and 3 more` translated in the GUI)."""
    shown = ", ".join(names[:limit])
    return Msg.of("list.more", names=shown, more=len(names) - limit) if len(names) > limit else shown


def scan_data_dir(root: str | Path, caption_extension: str, is_reg: bool = False) -> FolderScan:
    """All concept folders under `root` (immediate subfolders only, as Kohya), with problems found on the way."""
    root = Path(root)
    role = "reg_data_dir" if is_reg else "train_data_dir"
    if not root.exists():
        return FolderScan([], [Problem.at(root, "error", Msg.of("folder.missing", role=role))])
    if not root.is_dir():
        return FolderScan([], [Problem.at(root, "error", Msg.of("folder.is_file", role=role))])
    concepts: list[Concept] = []
    problems: list[Problem] = []
    loose_images = 0
    for entry in _sorted_entries(root):
        if entry.is_dir():
            if entry.name.startswith("."):
                continue  # .git, .ipynb_checkpoints, ...
            concept = _concept(Path(entry.path), entry.name, is_reg, problems)
            if concept is not None:
                concepts.append(concept)
        elif is_image_name(entry.name):
            loose_images += 1
    problems.extend(_root_problems(root, role, concepts, loose_images, is_reg))
    for concept in concepts:
        problems.extend(_list_concept(concept, caption_extension))
    return FolderScan(concepts, problems)


def _concept(path: Path, name: str, is_reg: bool, problems: list[Problem]) -> Concept | None:
    parsed = parse_concept_name(name)
    if parsed is None:
        problems.append(Problem.at(path, "warning", Msg.of("folder.no_prefix", name=name)))
        return None
    repeats, concept_name = parsed
    if repeats < 1:
        problems.append(Problem.at(path, "error", Msg.of("folder.zero_repeats", repeats=repeats, name=concept_name)))
        return None
    return Concept(path, repeats, concept_name, is_reg)


def _root_problems(root: Path, role: str, concepts: list[Concept], loose_images: int, is_reg: bool) -> list[Problem]:
    if loose_images and not concepts:
        if parse_concept_name(root.name) is not None:
            return [Problem.at(root, "error", Msg.of("folder.is_concept", parent=str(root.parent), role=role))]
        return [Problem.at(root, "error", Msg.of("folder.loose_only", role=role, target=str(root / ("10_" + root.name))))]
    problems = []
    if loose_images:
        problems.append(Problem.at(root, "warning", Msg.of("folder.loose_images", n=loose_images)))
    if not concepts:
        problems.append(Problem.at(root, "error", Msg.of("folder.no_concepts_reg" if is_reg else "folder.no_concepts", role=role)))
    return problems


def list_concept(concept: Concept, caption_extension: str) -> list[Problem]:
    """Fill `concept.images` from its folder (a dataset config's image_dir), with the folder's notes."""
    return _list_concept(concept, caption_extension)


def _list_concept(concept: Concept, caption_extension: str) -> list[Problem]:
    ignored: list[str] = []
    subfolders = 0
    cap = caption_extension.lower()
    for entry in _sorted_entries(concept.path):
        name = entry.name
        if entry.is_dir():
            subfolders += 1
        elif is_junk_name(name):
            ignored.append(name)
        elif is_image_name(name):
            concept.images.append(Path(entry.path))
        else:
            suffix = os.path.splitext(name)[1].lower()
            concept.other_suffixes.add(suffix)
            if suffix != cap and suffix not in _EXPECTED_SUFFIXES and suffix not in {".txt", ".caption"}:
                ignored.append(name)
    problems: list[Problem] = []
    if ignored:
        problems.append(Problem.at(concept.path, "info", Msg.of("folder.ignored_files", n=len(ignored), names=shown_names(ignored, 5))))
    if subfolders:
        problems.append(Problem.at(concept.path, "info", Msg.of("folder.subfolders", n=subfolders)))
    if not concept.images:
        problems.append(Problem.at(concept.path, "warning", Msg.of("folder.no_images")))
    return problems


def _sorted_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []
