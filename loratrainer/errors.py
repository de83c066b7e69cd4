"""The one error type users see as a message instead of a traceback. Imports only the leaf `messages`.

A UserError carries what the CLI prints (str(), English) and what a page needs to say it in its language: the
coded message (`msg`, with `code`), the file it is about (`path`: shown as `<path>: <reason>`) and, for bad form
values, pydantic's error list (`fields`). Callers read these attributes; they never guess by `hasattr`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loratrainer.messages import Msg


class UserError(Exception):
    """A problem the user can fix; str(exc) says what is wrong and what to do. The CLI prints it, exit code 2."""

    exit_code = 2

    def __init__(self, message: str | Msg = "", *, path: str | Path | None = None, fields: list[dict[str, Any]] | None = None):
        self.reason: str | Msg = message  # what is wrong, without the path
        self.msg: Msg | None = message if isinstance(message, Msg) else None
        self.path: Path | None = Path(path) if path is not None else None
        self.fields: list[dict[str, Any]] = list(fields or [])  # pydantic's errors, one per bad form value
        super().__init__(f"{path}: {message}" if path is not None else str(message))

    @property
    def code(self) -> str | None:
        """The message's stable code (loratrainer.messages), None for a plain-text error."""
        return self.msg.code if self.msg is not None else None
