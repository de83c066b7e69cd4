"""Caption files: `<stem><caption_extension>` next to each image, read as Kohya reads them (first line only).

We are more forgiving about encodings than Kohya (a UTF-8 BOM and CRLF line ends are normal on Windows)
and stricter about emptiness: an empty or whitespace-only file is a missing caption, so the user is told
that the folder-name fallback will apply instead of training silently on an empty string.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define


class CaptionError(UserError):
    """A caption file that exists but cannot be read as text; str() is '<path>: <reason>'."""

    def __init__(self, path: str | Path, reason: str | Msg):
        super().__init__(reason, path=path)


# CLIP reads at most 225 tokens (max_token_length), a few KB of text: a caption file far beyond that is a mistake
# (a log or a dump under a caption's name) that would otherwise be read whole for every step (docs/reliability.md).
MAX_CAPTION_BYTES = 64 * 1024

define({
    "caption.too_large": "the caption file is {size} KB; a caption is read by CLIP up to a few hundred tokens (at most {limit} KB): shorten it or move the file away",
    "caption.unreadable": "cannot read the caption file ({detail})",
    "caption.not_regular": "the caption is not a regular file (a pipe, a device or a link to one): replace it with a text file",
    "caption.not_utf8": "the caption is not UTF-8 text: open it in an editor and save it as UTF-8",
})


@dataclass(frozen=True)
class CaptionText:
    text: str | None  # first line, stripped; None = no usable caption
    path: Path | None  # the file it came from (None when there is none)
    extra_lines: bool  # the file has more non-empty lines, which Kohya (and we) ignore


def caption_path(image_path: str | Path, extension: str) -> Path:
    image_path = Path(image_path)
    return image_path.with_name(image_path.stem + extension)


def read_caption(image_path: str | Path, extension: str = ".txt") -> str | None:
    """The caption of an image (first line, BOM and whitespace stripped), or None when missing or empty."""
    return read_caption_file(image_path, extension).text


def read_caption_file(image_path: str | Path, extension: str = ".txt") -> CaptionText:
    """Like read_caption, with where it came from; a caption that is not UTF-8 raises CaptionError."""
    path = _find(caption_path(image_path, extension))
    if path is None:
        return CaptionText(None, None, False)
    try:
        # O_NONBLOCK and fstat: a FIFO or a link to /dev/zero under a caption's name was "missing or empty" and
        # the check said ready (docs/reliability.md "Paths and faults"); opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CaptionError(path, Msg.of("caption.not_regular"))
            if st.st_size > MAX_CAPTION_BYTES:
                raise CaptionError(path, Msg.of("caption.too_large", size=st.st_size // 1024, limit=MAX_CAPTION_BYTES // 1024))
            raw = fh.read(MAX_CAPTION_BYTES + 1)  # the file may grow between stat and read
    except OSError as exc:
        raise CaptionError(path, Msg.of("caption.unreadable", detail=exc.strerror)) from None
    if len(raw) > MAX_CAPTION_BYTES:
        raise CaptionError(path, Msg.of("caption.too_large", size=len(raw) // 1024, limit=MAX_CAPTION_BYTES // 1024))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CaptionError(path, Msg.of("caption.not_utf8")) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    first = lines[0].strip()
    extra = any(line.strip() for line in lines[1:])
    return CaptionText(first or None, path, extra)


def fallback_caption(concept_name: str) -> str:
    """Kohya's caption for images without a caption file: the concept folder's name part (`10_my dog` -> `my dog`)."""
    return concept_name


def _find(path: Path) -> Path | None:
    """The caption file: anything there but a folder (a FIFO or a device is found, then refused by name)."""
    if path.exists() and not path.is_dir():
        return path
    # Case-insensitive match of the extension (a.TXT on a case-sensitive file system), as for images.
    for ext in {path.suffix.lower(), path.suffix.upper()} - {path.suffix}:
        alt = path.with_suffix(ext)
        if alt.exists() and not alt.is_dir():
            return alt
    return None
