"""The one small interface every captioner implements, and the typed options that choose one.

A captioner turns a batch of upright RGB images into one text each. Everything else (which files, skipping,
backups, prefix/postfix, writing) is the same for all of them and lives in run.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable

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


@dataclass(frozen=True)
class BlipOptions:
    """Kohya's "Utilities > Captioning > BLIP" settings and defaults (docs/kohya-compat.md section 7)."""

    model: str = "Salesforce/blip-image-captioning-large"  # hub id or local folder
    beam_search: bool = True  # off: nucleus sampling with top_p
    num_beams: int = 1
    top_p: float = 0.9
    min_length: int = 5
    max_length: int = 75
    device: str | None = None  # None: "cuda" when there is one, else "cpu"

    def __post_init__(self) -> None:
        _check(self.num_beams >= 1, "captioner.num_beams")
        _check(0.0 < self.top_p <= 1.0, "captioner.top_p")
        _check(self.max_length >= 1, "captioner.max_length")
        _check(0 <= self.min_length <= self.max_length, "captioner.min_length")


@dataclass(frozen=True)
class GitOptions:
    model: str = "microsoft/git-large-textcaps"
    max_length: int = 50
    device: str | None = None

    def __post_init__(self) -> None:
        _check(self.max_length >= 1, "captioner.max_length")


@dataclass(frozen=True)
class TaggerOptions:
    """A WD14-style tagger (SmilingWolf/wd-*): an ONNX model plus selected_tags.csv, run with onnxruntime."""

    model: str = "SmilingWolf/wd-v1-4-convnext-tagger-v2"  # hub id or a local folder holding both files
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    undesired_tags: tuple[str, ...] = ()
    tag_separator: str = ", "
    replace_underscores: bool = True  # "long_hair" -> "long hair", as the Kohya GUI does by default
    include_rating: bool = False  # prepend the most likely rating tag (general, sensitive, ...)
    character_first: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        _check(0.0 <= self.general_threshold <= 1.0, "captioner.general_threshold")
        _check(0.0 <= self.character_threshold <= 1.0, "captioner.character_threshold")


@dataclass(frozen=True)
class FixedTextOptions:
    """Kohya's "basic captioning": the same text for every image (prefix/postfix still apply)."""

    text: str = ""


CaptionerOptions = Union[BlipOptions, GitOptions, TaggerOptions, FixedTextOptions]


@dataclass(frozen=True)
class FixedTextCaptioner:
    text: str

    def caption(self, images: list[Image.Image]) -> list[str]:
        return [self.text] * len(images)


def make_captioner(options: CaptionerOptions) -> Captioner:
    """Load the captioner the options describe; heavy libraries are imported only here."""
    if isinstance(options, FixedTextOptions):
        return FixedTextCaptioner(options.text)
    if isinstance(options, BlipOptions):
        from loratrainer.caption.blip import BlipCaptioner

        return BlipCaptioner(options)
    if isinstance(options, GitOptions):
        from loratrainer.caption.git import GitCaptioner

        return GitCaptioner(options)
    if isinstance(options, TaggerOptions):
        from loratrainer.caption.wd14 import TaggerCaptioner

        return TaggerCaptioner(options)
    raise TypeError(f"unknown captioner options {type(options).__name__}")


def _check(ok: bool, code: str) -> None:
    if not ok:
        raise UserError(Msg.of(code))


__all__ = [
    "BlipOptions",
    "Captioner",
    "CaptionerOptions",
    "FixedTextCaptioner",
    "FixedTextOptions",
    "GitOptions",
    "TaggerOptions",
    "make_captioner",
]
