"""What the transformers captioners (BLIP, GIT) share: loading processor and model, and batched generation."""

from __future__ import annotations

from typing import Any

from PIL import Image

from loratrainer.caption import hub
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "captioning.model_type": "{model} is a {found!r} model, not a {wanted!r} model: {advice}",
    "captioning.model_type_fits": "choose the {fits} captioner for it",
    "captioning.model_type_other": "choose a {wanted} model",
})

# The captioner (CLI --captioner, GUI method) that runs each model type we support.
CAPTIONER_OF = {"blip": "blip", "git": "git"}


class TransformersCaptioner:
    """An image-to-text model from transformers: a processor, a model with generate(), fixed generation settings."""

    def __init__(self, model_class: str, model_type: str, model: str, device: str | None,
                 generate_kwargs: dict[str, Any]):
        import torch

        from loratrainer.compat import hide_broken_torchvision

        hide_broken_torchvision()  # a torchvision that does not match torch would break every transformers model
        import transformers

        check_model_type(model, hub.load(model, transformers.AutoConfig.from_pretrained).model_type, model_type)
        self.device = hub.pick_device(device)
        # Half precision halves GPU memory and time for these captioning models; the CPU has no fast fp16.
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.processor = hub.load(model, transformers.AutoProcessor.from_pretrained)
        # Cast after loading: the from_pretrained dtype keyword changed name across transformers versions.
        loaded = hub.load(model, getattr(transformers, model_class).from_pretrained)
        self.model = loaded.to(self.device, self.dtype).eval()
        self.generate_kwargs = generate_kwargs

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            ids = self.model.generate(pixel_values=pixels.to(self.device, self.dtype), **self.generate_kwargs)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


def check_model_type(model: str, found: str, wanted: str) -> None:
    """transformers loads e.g. a GIT folder as BLIP with every weight freshly random (a warning, then gibberish
    captions); refuse that instead, naming the captioner that fits."""
    if found == wanted:
        return
    fits = CAPTIONER_OF.get(found)
    advice = Msg.of("captioning.model_type_fits", fits=fits) if fits else Msg.of("captioning.model_type_other", wanted=wanted)
    raise UserError(Msg.of("captioning.model_type", model=model, found=found, wanted=wanted, advice=advice))
