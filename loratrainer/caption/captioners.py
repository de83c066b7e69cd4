"""Options -> a loaded captioner. The model captioners (blip, git, wd14) import their options from base; this
module imports them only when one is made, so base stays free of them and torch/onnxruntime load late."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from loratrainer.caption.base import BlipOptions, Captioner, CaptionerOptions, FixedTextOptions, GitOptions, TaggerOptions


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
