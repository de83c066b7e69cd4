"""The field catalogue of the config schema: every setting with its path, type, default, label, help, choices,
range and form hints (Basic or Advanced, multi-line, file browser, path check).

The GUI builds its form from `field_specs()`, the CLI resolves `--set key=value` with `resolve_key()`, and the
Kohya import reads the types from it. Re-exported by the package: import these names from `loratrainer.config`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, get_args, get_origin

from loratrainer.config.schema import GROUPS, TrainingConfig
from loratrainer.messages import Msg, MsgError, define

# A loose value that is not of its field's type (FieldSpec.coerce; the Kohya import names the key and the value).
define({
    "value.expected_bool": "expected true or false",
    "value.expected_number": "expected a number",
    "value.expected_finite": "expected a finite number",
    "value.expected_whole": "expected a whole number",
    "value.expected_text": "expected text",
})


@dataclass(frozen=True)
class FieldSpec:
    path: str  # "network.network_dim": the GUI component name and the --set key
    group: str
    name: str
    annotation: Any
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    minimum: float | None
    maximum: float | None
    label: str = ""  # the English label (the schema's title)
    basic: int | None = None  # place among the Basic settings; None = Advanced
    lines: int = 1  # > 1: a multi-line text box
    browse: str | None = None  # "model", "file" or "dir": a file browser beside the box
    check: str | None = None  # the as-you-type path check's role ("model", "train", "reg", "output", "log")

    @property
    def kind(self) -> str:
        """'bool', 'int', 'float', 'choice' or 'text': how a form renders it."""
        if self.choices is not None:
            return "choice"
        base = [a for a in get_args(self.annotation) if a is not type(None)] or [self.annotation]
        t = base[0]
        return {bool: "bool", int: "int", float: "float"}.get(t, "text")

    def coerce(self, value: Any) -> Any:
        """A loose value (a Kohya GUI file's "0.0001", 64.0 or "true"; a form's 3.0 from a number box, a
        dropdown's "150" for a choice of numbers, None from an emptied text box) as this field's Python type; the
        schema then checks the range. MsgError (a ValueError) says what is wrong."""
        kind = self.kind
        if kind == "choice":
            sample = self.choices[0] if self.choices else ""
            kind = "bool" if isinstance(sample, bool) else "int" if isinstance(sample, int) else "text"
        if value is None:
            if self.kind == "text":
                return ""
            raise MsgError(Msg.of({"bool": "value.expected_bool", "text": "value.expected_text"}.get(kind, "value.expected_number")))
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
                return value.strip().lower() == "true"
            raise MsgError(Msg.of("value.expected_bool"))
        if kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise MsgError(Msg.of("value.expected_number"))
            try:
                number = float(value.strip()) if isinstance(value, str) else value
            except ValueError:
                raise MsgError(Msg.of("value.expected_number")) from None
            if not math.isfinite(number):
                raise MsgError(Msg.of("value.expected_finite"))
            if kind == "float":
                return float(number) if isinstance(value, str) else value
            if isinstance(number, int):  # exact, however large (the range check names it)
                return number
            if float(number) != int(number):
                raise MsgError(Msg.of("value.expected_whole"))
            return int(number)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise MsgError(Msg.of("value.expected_text"))
        return value if isinstance(value, str) else (str(int(value)) if float(value).is_integer() else str(value))


def field_specs() -> list[FieldSpec]:
    specs: list[FieldSpec] = []
    for group, cls in GROUPS.items():
        for name, info in cls.model_fields.items():
            ann = info.annotation
            choices = tuple(get_args(ann)) if get_origin(ann) is Literal else None
            lo = hi = None
            for m in info.metadata:
                lo = getattr(m, "ge", getattr(m, "gt", lo)) if lo is None else lo
                hi = getattr(m, "le", getattr(m, "lt", hi)) if hi is None else hi
            extra = info.json_schema_extra
            ui = extra.get("ui") if isinstance(extra, dict) else None
            hints: dict[str, Any] = ui if isinstance(ui, dict) else {}
            specs.append(FieldSpec(f"{group}.{name}", group, name, ann, info.default, info.description or "", choices, lo, hi,
                                   label=info.title or name.replace("_", " ").capitalize(), basic=hints.get("basic"),
                                   lines=hints.get("lines", 1), browse=hints.get("browse"), check=hints.get("check")))
    return specs


@cache
def _leaf_to_path() -> dict[str, str]:
    return {s.name: s.path for s in field_specs()}


def resolve_key(key: str) -> str:
    """'network_dim' or 'network.network_dim' -> 'network.network_dim'; unknown keys raise KeyError."""
    paths = _leaf_to_path()
    if key in paths.values():
        return key
    if key in paths:
        return paths[key]
    raise KeyError(f"unknown setting {key!r}")


def get_value(config: TrainingConfig, path: str) -> Any:
    group, name = resolve_key(path).split(".")
    return getattr(getattr(config, group), name)


def with_values(config: TrainingConfig, values: dict[str, Any]) -> TrainingConfig:
    """A new config with `values` ({path or leaf: value}) applied, validated as a whole."""
    data = config.model_dump()
    for key, value in values.items():
        group, name = resolve_key(key).split(".")
        data[group][name] = value
    return TrainingConfig.model_validate(data)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """CLI `--set key=value` strings -> {setting path: value}; values are parsed as JSON when they can be, else
    kept as text. Unknown keys raise KeyError, a string without "=" ValueError."""
    values: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            values[resolve_key(key.strip())] = json.loads(raw)
        except json.JSONDecodeError:
            values[resolve_key(key.strip())] = raw
    return values


def apply_overrides(config: TrainingConfig, assignments: list[str]) -> TrainingConfig:
    """Apply CLI `--set key=value` strings to a config."""
    return with_values(config, parse_assignments(assignments))
