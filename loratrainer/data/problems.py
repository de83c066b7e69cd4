"""One dataset problem: which file or folder, how bad, what to do. Shared by the scanner, the check and prepare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Problem:
    """`error` refuses training; `warning` trains but the user should look; `info` is for the record."""

    path: str
    severity: Severity
    message: str  # what is wrong and the fix, in one line

    @classmethod
    def at(cls, path: str | Path, severity: Severity, message: str) -> "Problem":
        return cls(str(path), severity, message)

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "severity": self.severity, "message": self.message}
