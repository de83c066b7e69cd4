"""One dataset problem: which file or folder, how bad, what to do. Shared by the scanner, the check and prepare.

`message` is the English line the CLI prints; `msg` (when the problem was made from a Msg) carries the stable
code and parameters the GUI translates (loratrainer/messages.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loratrainer.messages import Msg

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Problem:
    """`error` refuses training; `warning` trains but the user should look; `info` is for the record."""

    path: str
    severity: Severity
    message: str  # what is wrong and the fix, in one line (English)
    msg: Msg | None = field(default=None, compare=False, hash=False)

    @property
    def code(self) -> str:
        return self.msg.code if self.msg is not None else ""

    @classmethod
    def at(cls, path: str | Path, severity: Severity, message: str | Msg) -> "Problem":
        if isinstance(message, Msg):
            return cls(str(path), severity, str(message), message)
        return cls(str(path), severity, message)

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "severity": self.severity, "message": self.message, "code": self.code}
