"""BLIP captions (Salesforce/blip-image-captioning-large by default) with Kohya's generation settings."""

from __future__ import annotations

from typing import Any

from loratrainer.caption.base import BlipOptions
from loratrainer.caption.hf import TransformersCaptioner


def generate_kwargs(options: BlipOptions) -> dict[str, Any]:
    """Kohya's BLIP: beam search with num_beams, or nucleus sampling with top_p; min/max length either way."""
    lengths = {"min_length": options.min_length, "max_length": options.max_length}
    if options.beam_search:
        return {"do_sample": False, "num_beams": options.num_beams, **lengths}
    return {"do_sample": True, "top_p": options.top_p, "num_beams": 1, **lengths}


class BlipCaptioner(TransformersCaptioner):
    def __init__(self, options: BlipOptions):
        kwargs = generate_kwargs(options)
        super().__init__("BlipForConditionalGeneration", "blip", options.model, options.device, kwargs)
