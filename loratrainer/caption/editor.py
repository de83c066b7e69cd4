"""The Python side of the GUI's caption editor: a page of (image, caption), save one caption, search and
replace across the folder, tag frequency.

Every save is atomic and goes only to the caption file beside an image inside the chosen folder.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from loratrainer.caption import basic, writer
from loratrainer.caption import folder as folders
from loratrainer.data.captions import CaptionError
from loratrainer.data.images import is_image_name
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "captioning.page_size": "page size must be at least 1",
    "captioning.not_inside": "{image} is not an image inside {root}: caption not saved",
})

search_replace = basic.find_replace  # the same edit, with backups, as the CLI's --find/--replace


@dataclass(frozen=True)
class CaptionItem:
    image: Path
    caption_file: Path  # where the caption is (or will be) saved
    caption: str  # the whole file, "" when there is none
    error: str = ""  # why the caption could not be read (then it is shown read-only by the GUI)


@dataclass(frozen=True)
class CaptionPage:
    items: list[CaptionItem]
    page: int  # 1-based, clamped to 1..pages
    pages: int
    total: int  # images matching the query


def list_page(root: Path, page: int = 1, page_size: int = 24, *, caption_extension: str = ".txt",
              recursive: bool = False, query: str = "") -> CaptionPage:
    """One page of images with their captions; `query` keeps images whose caption or file name contains it."""
    if page_size < 1:
        raise UserError(Msg.of("captioning.page_size"))
    ext = writer.normalize_extension(caption_extension)
    items = [_item(image, ext) for image in folders.find_images(Path(root), recursive)]
    needle = query.strip().lower()
    if needle:
        items = [i for i in items if needle in i.caption.lower() or needle in i.image.name.lower()]
    pages = max(1, math.ceil(len(items) / page_size))
    page = min(max(1, page), pages)
    return CaptionPage(items[(page - 1) * page_size : page * page_size], page, pages, len(items))


def save_caption(root: Path, image: Path, text: str, *, caption_extension: str = ".txt") -> Path:
    """Atomically save the caption of `image` (which must be an image inside `root`); CRLF becomes "\\n"."""
    root, image = Path(root).resolve(), Path(image)
    resolved = (root / image).resolve() if not image.is_absolute() else image.resolve()
    if not resolved.is_relative_to(root) or not is_image_name(resolved.name) or not resolved.is_file():
        raise UserError(Msg.of("captioning.not_inside", image=str(image), root=str(root)))
    target = writer.caption_path(resolved, writer.normalize_extension(caption_extension))
    return writer.write_caption(target, writer.clean_text(text))


def tag_frequency(root: Path, *, separator: str = ",", caption_extension: str = ".txt",
                  recursive: bool = False) -> list[tuple[str, int]]:
    """How many captions hold each tag (first line split on `separator`), most frequent first."""
    counts: Counter[str] = Counter()
    for path in basic.caption_files(Path(root), caption_extension, recursive):
        try:
            first = writer.read_text(path).partition("\n")[0]
        except CaptionError:
            continue
        counts.update({tag.strip() for tag in first.split(separator) if tag.strip()})
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _item(image: Path, ext: str) -> CaptionItem:
    path = writer.existing_caption(image, ext) or writer.caption_path(image, ext)
    try:
        return CaptionItem(image, path, writer.read_text(path) if path.is_file() else "")
    except CaptionError as exc:
        return CaptionItem(image, path, "", str(exc))
