"""Which images a captioning run sees, and the stems that would share one caption file."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from loratrainer.data.images import is_image_name
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "captioning.no_folder": "image folder {folder} does not exist (or is not a folder)",
    "captioning.duplicate_stems": (
        "{count} image name(s) are used by more than one image, so they would share one caption "
        "file: {listed}. Rename or remove one image of each pair, then caption again."
    ),
})


def find_images(root: Path, recursive: bool) -> list[Path]:
    """Images under `root` (sorted), junk such as ._a.jpg ignored; hidden folders (our backups) never entered."""
    if not root.is_dir():
        raise UserError(Msg.of("captioning.no_folder", folder=str(root)))
    if not recursive:
        return sorted(p for p in root.iterdir() if p.is_file() and is_image_name(p.name))
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder, f) for f in files if is_image_name(f)]
    return sorted(found)


def duplicate_stems(images: list[Path]) -> list[list[Path]]:
    """Groups of images in one folder that share a stem (a.jpg + a.png): they would write the same caption.

    Compared case-insensitively, because A.txt and a.txt are one file on Windows and macOS.
    """
    groups: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    for image in images:
        groups[(image.parent, image.stem.lower())].append(image)
    return [sorted(g) for g in groups.values() if len(g) > 1]


class DuplicateStemsError(UserError):
    """Captioning refuses a folder where two images would share one caption file (docs/reliability.md row 8)."""

    def __init__(self, groups: list[list[Path]]):
        self.groups = groups
        listed = "; ".join(" + ".join(str(p) for p in g) for g in groups)
        super().__init__(Msg.of("captioning.duplicate_stems", count=len(groups), listed=listed))
