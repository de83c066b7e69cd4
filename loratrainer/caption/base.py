"""The one small interface every captioner implements, and the typed options that choose one.

A captioner turns a batch of upright RGB images into one text each. Everything else (which files, skipping,
backups, prefix/postfix, writing) is the same for all of them and lives in run.py; captioners.py loads the one
the options describe (the captioner modules import this one, never the other way).

Each option is declared once, with `option(...)`: its default, range, the key of its label on the Utilities
tab and its `loratrainer caption` flag and help. The CLI flags (cli/caption.py) and the tab's components
(gui/tab_utilities.py) are generated from these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

from PIL import Image

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "captioner.num_beams": "number of beams must be at least 1",
    "captioner.top_p": "top_p must be in (0, 1]",
    "captioner.max_length": "max length must be at least 1",
    "captioner.min_length": "min length must be between 0 and max length",
    "captioner.general_threshold": "general threshold must be between 0 and 1",
    "captioner.character_threshold": "character threshold must be between 0 and 1",
})


@runtime_checkable
class Captioner(Protocol):
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order."""
        ...


def option(default: Any, *, label: str | None = None, info: str | None = None, cli: str | None = None,
           flag: str | None = None, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A captioner setting, declared once for both front ends.

    label/info: i18n keys of its label and help on the Utilities tab (None: not on the page);
    cli: its English help for `loratrainer caption` (None: no flag); flag: the flag when it is not
    `--<name>` (a bool flag always sets the opposite of the default, e.g. --no-beam-search);
    minimum/maximum: the range a number box allows (the class checks it again in __post_init__).
    """
    meta = {"label": label, "info": info, "cli": cli, "flag": flag, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata=meta)


_MODEL_CLI = "hub id or local folder (default: the captioner's usual model)"
_DEVICE_CLI = "cuda, cuda:1, cpu (default: the GPU when there is one)"


@dataclass(frozen=True)
class BlipOptions:
    """Kohya's "Utilities > Captioning > BLIP" settings and defaults (docs/kohya-compat.md section 7)."""

    model: str = option("Salesforce/blip-image-captioning-large", label="caption.model", info="caption.model_help", cli=_MODEL_CLI)
    beam_search: bool = option(True, label="caption.beam_search", flag="--no-beam-search",
                               cli="BLIP: sample with --top-p instead of beam search")
    num_beams: int = option(1, label="caption.num_beams", minimum=1, cli="BLIP: beams for beam search")
    top_p: float = option(0.9, label="caption.top_p", minimum=0, maximum=1, cli="BLIP: nucleus sampling top_p")
    min_length: int = option(5, label="caption.min_length", minimum=0, cli="BLIP: minimum caption length in tokens")
    max_length: int = option(75, label="caption.max_length", minimum=1, cli="maximum caption length in tokens")
    device: str | None = option(None, cli=_DEVICE_CLI)  # None: "cuda" when there is one, else "cpu"

    def __post_init__(self) -> None:
        _check(self.num_beams >= 1, "captioner.num_beams")
        _check(0.0 < self.top_p <= 1.0, "captioner.top_p")
        _check(self.max_length >= 1, "captioner.max_length")
        _check(0 <= self.min_length <= self.max_length, "captioner.min_length")


@dataclass(frozen=True)
class GitOptions:
    model: str = option("microsoft/git-large-textcaps", label="caption.model", info="caption.model_help", cli=_MODEL_CLI)
    max_length: int = option(50, label="caption.max_length", minimum=1, cli="maximum caption length in tokens")
    device: str | None = option(None, cli=_DEVICE_CLI)

    def __post_init__(self) -> None:
        _check(self.max_length >= 1, "captioner.max_length")


@dataclass(frozen=True)
class TaggerOptions:
    """A WD14-style tagger (SmilingWolf/wd-*): an ONNX model plus selected_tags.csv, run with onnxruntime."""

    # a hub id or a local folder holding both files
    model: str = option("SmilingWolf/wd-v1-4-convnext-tagger-v2", label="caption.model", info="caption.model_help", cli=_MODEL_CLI)
    general_threshold: float = option(0.35, label="caption.general_threshold", minimum=0, maximum=1, cli="general tag threshold")
    character_threshold: float = option(0.85, label="caption.character_threshold", minimum=0, maximum=1, cli="character tag threshold")
    undesired_tags: tuple[str, ...] = option((), label="caption.undesired", cli="comma-separated tags never to write")
    tag_separator: str = option(", ", cli="between tags, prefix and postfix (default ', ')")
    # "long_hair" -> "long hair", as the Kohya GUI does by default
    replace_underscores: bool = option(True, flag="--keep-underscores", cli="write long_hair instead of long hair")
    # prepend the most likely rating tag (general, sensitive, ...)
    include_rating: bool = option(False, cli="start with the most likely rating tag")
    character_first: bool = True
    device: str | None = option(None, cli=_DEVICE_CLI)

    def __post_init__(self) -> None:
        _check(0.0 <= self.general_threshold <= 1.0, "captioner.general_threshold")
        _check(0.0 <= self.character_threshold <= 1.0, "captioner.character_threshold")


@dataclass(frozen=True)
class FixedTextOptions:
    """Kohya's "basic captioning": the same text for every image (prefix/postfix still apply)."""

    text: str = option("", label="caption.fixed_text")


CaptionerOptions = Union[BlipOptions, GitOptions, TaggerOptions, FixedTextOptions]
# The captioning methods by the names the CLI (--captioner; fixed text is --basic) and the GUI use.
METHODS: dict[str, type] = {"blip": BlipOptions, "git": GitOptions, "wd14": TaggerOptions, "fixed": FixedTextOptions}
MODEL_METHODS = ("blip", "git", "wd14")


@dataclass(frozen=True)
class OptionSpec:
    """One declared option as the front ends read it."""

    name: str
    kind: str  # "bool", "int", "float", "text" or "tags" (a comma-separated list)
    default: Any
    label: str | None
    info: str | None
    cli: str | None
    flag: str
    minimum: float | None
    maximum: float | None


def option_specs(cls: type) -> list[OptionSpec]:
    """The options of a captioner's options class, in declaration order."""
    import dataclasses
    from typing import get_type_hints

    hints = get_type_hints(cls)
    kinds = {bool: "bool", int: "int", float: "float", tuple[str, ...]: "tags"}
    out = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        out.append(OptionSpec(f.name, kinds.get(hints[f.name], "text"), f.default, m.get("label"), m.get("info"), m.get("cli"),
                              m.get("flag") or "--" + f.name.replace("_", "-"), m.get("minimum"), m.get("maximum")))
    return out


def options_from_values(cls: type, values: dict[str, Any]) -> CaptionerOptions:
    """An options object from raw values by name (a form's boxes, parsed flags): None, or an empty box where
    the option has a default text (an empty model box), keeps the default; numbers are cast, tags split at commas."""
    kwargs: dict[str, Any] = {}
    for spec in option_specs(cls):
        value = values.get(spec.name)
        if value is None or (spec.kind == "text" and spec.default and value == ""):
            continue
        if spec.kind == "tags":
            value = tuple(x.strip() for x in (value.split(",") if isinstance(value, str) else value) if x.strip())
        elif spec.kind in ("int", "float"):
            value = (int if spec.kind == "int" else float)(value)
        elif spec.kind == "bool":
            value = bool(value)
        kwargs[spec.name] = value
    return cls(**kwargs)


def _check(ok: bool, code: str) -> None:
    if not ok:
        raise UserError(Msg.of(code))


__all__ = [
    "METHODS",
    "MODEL_METHODS",
    "OptionSpec",
    "option_specs",
    "options_from_values",
    "BlipOptions",
    "Captioner",
    "CaptionerOptions",
    "FixedTextOptions",
    "GitOptions",
    "TaggerOptions",
]
