"""Kohya's "basic captioning" on captions that already exist: find and replace, add a prefix or postfix.

Writing one fixed text for every image is `caption_folder(..., FixedTextOptions(text))`, with the same skip
and backup rules as the model captioners. Edits here change the user's files because they asked for exactly
that; the old versions still go to a backup folder first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loratrainer.caption import folder as folders
from loratrainer.caption import writer
from loratrainer.caption.run import Skipped
from loratrainer.data.captions import CaptionError
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "captioning.find_empty": "find text is empty: type the text to replace",
    "captioning.bad_pattern": "find pattern {find!r} is not a valid regular expression: {error}",
})


@dataclass
class EditReport:
    changed: list[Path] = field(default_factory=list)  # caption files rewritten
    unchanged: int = 0
    failed: list[Skipped] = field(default_factory=list)  # caption files that could not be read
    backup_dir: Path | None = None

    def summary(self) -> list[str]:
        lines = [f"{len(self.changed)} captions changed, {self.unchanged} unchanged"]
        if self.backup_dir:
            lines.append(f"old captions backed up to {self.backup_dir}")
        lines += [f"  {s.path}: {s.reason}" for s in self.failed]
        return lines


def caption_files(root: Path, extension: str, recursive: bool) -> list[Path]:
    """The existing caption files of the images under `root` (empty ones included: they can gain a prefix)."""
    ext = writer.normalize_extension(extension)
    images = folders.find_images(Path(root), recursive)
    return [p for p in (writer.caption_path(i, ext) for i in images) if p.is_file()]


def edit_captions(root: Path, edit: Callable[[str], str], *, caption_extension: str = ".txt",
                  recursive: bool = False) -> EditReport:
    """Apply `edit` to every caption text; back up, then atomically rewrite, only the ones it changes."""
    root = Path(root)
    report, changes = EditReport(), {}
    for path in caption_files(root, caption_extension, recursive):
        try:
            old = writer.read_text(path)
        except CaptionError as exc:
            report.failed.append(Skipped(path, exc.reason))
            continue
        new = edit(old)
        if new == old:
            report.unchanged += 1
        else:
            changes[path] = new
    report.backup_dir = writer.back_up(root, list(changes))
    report.changed = [writer.write_caption(path, text) for path, text in changes.items()]
    return report


def replacer(find: str, replace: str, *, regex: bool = False, ignore_case: bool = False) -> Callable[[str], str]:
    if not find:
        raise UserError(Msg.of("captioning.find_empty"))
    try:
        pattern = re.compile(find if regex else re.escape(find), re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise UserError(Msg.of("captioning.bad_pattern", find=find, error=str(exc))) from None
    # A literal replacement must not interpret backslashes as group references.
    return lambda text: pattern.sub(replace if regex else (lambda _: replace), text)


def find_replace(root: Path, find: str, replace: str, *, caption_extension: str = ".txt", recursive: bool = False,
                 regex: bool = False, ignore_case: bool = False) -> EditReport:
    """Replace `find` with `replace` in every caption of the folder."""
    edit = replacer(find, replace, regex=regex, ignore_case=ignore_case)
    return edit_captions(root, edit, caption_extension=caption_extension, recursive=recursive)


def add_prefix_postfix(root: Path, prefix: str = "", postfix: str = "", *, separator: str = " ",
                       caption_extension: str = ".txt", recursive: bool = False) -> EditReport:
    """Add a prefix and/or postfix to every caption, joined by `separator`; captions that have it already keep
    their text, so running twice does not double it."""
    edit = prefix_postfix_edit(prefix, postfix, separator)
    return edit_captions(root, edit, caption_extension=caption_extension, recursive=recursive)


def prefix_postfix_edit(prefix: str, postfix: str, separator: str = " ") -> Callable[[str], str]:
    """The edit add_prefix_postfix makes to one caption text (the GUI's preview shows it on an example)."""
    pre, post = writer.one_line(prefix), writer.one_line(postfix)

    def edit(text: str) -> str:
        first, _, rest = text.partition("\n")
        if pre and not first.startswith(pre):
            first = writer.compose(pre, first, "", separator)
        if post and not first.endswith(post):
            first = writer.compose("", first, post, separator)
        return first + ("\n" + rest if rest else "")

    return edit
