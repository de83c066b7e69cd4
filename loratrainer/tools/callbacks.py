"""How a tool says how far it is and learns that it should stop: a callback and a cancel check, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from loratrainer.errors import UserError
from loratrainer.tools.messages import tool_error


class Cancelled(UserError):
    """The user cancelled; nothing was written."""

    exit_code = 10


@dataclass
class Progress:
    report: Callable[[int, int, str], None] | None = None  # (done, total, what)
    cancelled: Callable[[], bool] | None = None

    def step(self, done: int, total: int, what: str = "") -> None:
        if self.cancelled is not None and self.cancelled():
            raise Cancelled(tool_error("cancelled"))
        if self.report is not None:
            self.report(done, total, what)


NO_PROGRESS = Progress()
