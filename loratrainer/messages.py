"""Messages with a stable code: the English text for the CLI and the logs, a code and parameters for the GUI.

A module that reports something the user reads (a dataset problem, a Kohya import note) declares its English
templates once with `define({"code": "text with {param}"})` and builds messages with `Msg.of(code, **params)`.
`str(msg)` is the English sentence (what the CLI prints). The GUI renders the same message in the page's language
from `msg.<code>` in loratrainer/i18n/<lang>.json, falling back to the English text; tests/test_gui_i18n.py
checks that every defined code has a Korean template with the same placeholders.

A parameter may itself be a Msg (a reason inside a sentence, an optional hint): it is rendered in the same
language. A leaf module: nothing here imports the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

ENGLISH: dict[str, str] = {}


def define(templates: Mapping[str, str]) -> None:
    """Register English templates; a code defined twice with another text is a programming error."""
    for code, text in templates.items():
        if ENGLISH.get(code, text) != text:
            raise ValueError(f"message code {code!r} defined twice with different texts")
        ENGLISH[code] = text


@dataclass(frozen=True)
class Msg:
    code: str
    params: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)

    @classmethod
    def of(cls, code: str, **params: Any) -> "Msg":
        if code not in ENGLISH:
            raise KeyError(f"undefined message code {code!r}")
        return cls(code, params)

    def render(self, template_for: Callable[[str], str | None], label_for: Callable[[str], str] | None = None) -> str:
        """The text with `template_for(code)` (None: the English template), parameters rendered alike; a Label
        parameter is `label_for(path)` (None: the setting's path, as the CLI names it)."""
        values = {k: (v.render(template_for, label_for) if isinstance(v, (Msg, Label)) else v) for k, v in self.params.items()}
        return (template_for(self.code) or ENGLISH[self.code]).format(**values)

    def __str__(self) -> str:
        return self.render(lambda code: None)


@dataclass(frozen=True)
class Label:
    """A setting named inside a message: its path in English (`dataset.color_aug`), its label on a page."""

    path: str

    def render(self, template_for: Callable[[str], str | None], label_for: Callable[[str], str] | None = None) -> str:
        return label_for(self.path) if label_for else self.path

    def __str__(self) -> str:
        return self.path


class MsgError(ValueError):
    """A ValueError carrying a coded message (a schema validator's complaint): str() is the English text, so
    pydantic's message and the CLI stay as they were; the GUI says `.msg` in its language."""

    def __init__(self, msg: Msg):
        super().__init__(str(msg))
        self.msg = msg
