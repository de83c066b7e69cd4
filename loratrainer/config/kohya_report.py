"""The report of a Kohya GUI import or export: what happened to each key that was not taken over unchanged,
in sections (problems first), each line a coded message so the GUI says it in its language."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from loratrainer.messages import Msg, define

_MAX_STEPS_NOTE = "max_train_steps (0 = use epochs; the Kohya GUI's on-screen default is 1600)"

define({
    "kohya.read_as_kohya": "Read {source} as a Kohya GUI config.",
    "kohya.read_as_ours": "Read {source} as a loratrainer config.",
    "kohya.section.problems": "MUST BE CHANGED BEFORE TRAINING (Start refuses these)",
    "kohya.section.unsupported": "NOT SUPPORTED (imported differently or left out; check these)",
    "kohya.section.migrated": "Migrated",
    "kohya.section.coerced": "Coerced",
    "kohya.section.defaulted": "Empty, null or not set: replaced",
    "kohya.section.ignored": "Ignored (no effect)",
    "kohya.missing": "Not in the file, our defaults used: {keys}",
    "kohya.max_steps_default": _MAX_STEPS_NOTE,
    "kohya.hidden": "(hidden)",
})


@dataclass(frozen=True)
class ReportItem:
    key: str
    message: str  # English
    msg: Msg | None = field(default=None, compare=False, hash=False)  # the same, coded, for the GUI's languages

    @classmethod
    def of(cls, key: str, code: str, **params: Any) -> "ReportItem":
        msg = Msg.of(code, **params)
        return cls(key, str(msg), msg)

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"

    def render(self, say: Callable[[Msg], str] = str) -> str:
        return f"{self.key}: {say(self.msg) if self.msg is not None else self.message}"


SECTIONS = ("problems", "unsupported", "migrated", "coerced", "defaulted", "ignored")


@dataclass
class ImportReport:
    """What a conversion did with each key that was not taken over unchanged."""

    source: str = ""
    format: str = "loratrainer"  # "loratrainer" | "kohya"
    problems: list[ReportItem] = field(default_factory=list)  # imported, but Start refuses them until changed
    coerced: list[ReportItem] = field(default_factory=list)
    migrated: list[ReportItem] = field(default_factory=list)
    defaulted: list[ReportItem] = field(default_factory=list)
    unsupported: list[ReportItem] = field(default_factory=list)
    ignored: list[ReportItem] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # our settings the file did not mention: they take our defaults

    def keys(self, kind: str) -> list[str]:
        return [item.key for item in getattr(self, kind)]

    def mentions(self, key: str) -> bool:
        return any(item.key == key for kind in SECTIONS for item in getattr(self, kind))

    def lines(self, say: Callable[[Msg], str] = str) -> list[str]:
        """Human-readable report, loud items first; `say` renders each coded message (the GUI: in its language)."""
        out = []
        if self.source:
            out.append(say(Msg.of("kohya.read_as_kohya" if self.format == "kohya" else "kohya.read_as_ours", source=self.source)))
        for kind in SECTIONS:
            items = getattr(self, kind)
            if items:
                out.append(say(Msg.of(f"kohya.section.{kind}")) + ":")
                out.extend(f"  {item.render(say)}" for item in items)
        if self.missing:
            keys = [say(Msg.of("kohya.max_steps_default")) if k == _MAX_STEPS_NOTE else k for k in self.missing]
            out.append(say(Msg.of("kohya.missing", keys=", ".join(keys))))
        return out
