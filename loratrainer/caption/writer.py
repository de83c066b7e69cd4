"""Caption files on disk: where they live, how they are read and written, and backups before any overwrite.

A user's captions are sacred (docs/reliability.md rows 9 and 10): we read UTF-8 with or without a BOM and any line
ending, write UTF-8 without a BOM with "\\n", always atomically, and copy a file into a backup folder before we
replace its content.
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

from loratrainer.data.captions import CaptionError, caption_path, read_caption_file
from loratrainer.errors import UserError
from loratrainer.files import atomic_write
from loratrainer.messages import Msg, define

define({
    "captioning.bad_extension": "caption extension {extension!r} is not valid: use something like .txt or .caption",
    "captioning.write_failed": ("cannot write the caption {path} ({error}): free some space or make the "
                                "folder writable, then run again; captions written before this one are kept"),
    "captioning.backup_failed": ("cannot back up the old captions to {folder} ({error}), so "
                                 "none was replaced: free some space or make the folder writable"),
})

# Inside the chosen image folder, so nothing outside the folder the user picked is written (docs/reliability.md row 24).
# A dot folder: image discovery and training skip it.
BACKUP_DIR_NAME = ".caption-backups"

_EXTENSION = re.compile(r"^\.[A-Za-z0-9_-]{1,16}$")


def normalize_extension(extension: str) -> str:
    """'.txt', 'txt' -> '.txt'. Anything that could point outside the image's folder is refused."""
    ext = extension.strip()
    if ext and not ext.startswith("."):
        ext = "." + ext
    if not _EXTENSION.match(ext):
        raise UserError(Msg.of("captioning.bad_extension", extension=extension))
    return ext


def read_text(path: Path) -> str:
    """The whole file with BOM stripped and CRLF/CR normalised (for editing; training reads the first line)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CaptionError(path, Msg.of("caption.not_utf8")) from None
    return clean_text(text)


def clean_text(text: str) -> str:
    """CRLF and CR as "\\n", surrounding whitespace stripped: a caption as it is read for editing and saved."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def existing_caption(image: Path, extension: str) -> Path | None:
    """The file that holds this image's caption, None when there is none or it is empty or whitespace.

    Empty and whitespace-only files count as missing (docs/reliability.md row 10), so captioning fills them; a file
    with text on any line is somebody's caption, even when training would read only its empty first line.
    """
    try:
        found = read_caption_file(image, extension)
    except CaptionError:  # not UTF-8, but still somebody's text: it exists and is kept
        return caption_path(image, extension)
    return found.path if found.text is not None or found.extra_lines else None


def one_line(text: str) -> str:
    """Captions are one line: generated text can hold newlines and runs of spaces."""
    return " ".join(text.split())


def compose(prefix: str, caption: str, postfix: str, separator: str = " ") -> str:
    """Prefix, caption and postfix joined with single spaces, empty parts left out (docs/kohya-compat.md section 7).

    Tag captions pass their tag separator instead, so a prefix becomes the first tag.
    """
    return separator.join(part for part in (one_line(prefix), one_line(caption), one_line(postfix)) if part)


def write_caption(path: Path, text: str) -> Path:
    """Atomically write one caption: UTF-8 without BOM, one trailing "\\n"."""
    try:
        return atomic_write(path, text.rstrip("\n") + "\n")
    except OSError as exc:  # a full disk, a read-only folder: the old file is intact (atomic_write)
        raise UserError(Msg.of("captioning.write_failed", path=str(path), error=str(exc.strerror or exc))) from exc


def new_backup_dir(root: Path) -> Path:
    """A fresh timestamped folder under <root>/.caption-backups/; never reuses an existing one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / BACKUP_DIR_NAME / stamp
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{stamp}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def back_up(root: Path, files: list[Path]) -> Path | None:
    """Copy `files` (all under `root`) into a new backup folder, keeping their relative paths.

    Called before the first overwrite, so a crash midway still leaves every old caption in the backup; each copy
    is written atomically and fsynced, like the captions themselves.
    """
    existing = [f for f in files if f.exists()]
    if not existing:
        return None
    try:
        target = new_backup_dir(root)
        for src in existing:
            dest = target / src.relative_to(root)
            # Through the fsyncing writer: after a crash right after the caption is replaced, the backup is on disk.
            atomic_write(dest, src.read_bytes(), overwrite=False)
            shutil.copystat(src, dest)
    except OSError as exc:
        raise UserError(Msg.of("captioning.backup_failed", folder=str(root / BACKUP_DIR_NAME), error=str(exc.strerror or exc))) from exc
    return target
