"""What the transformers captioners (BLIP, GIT) share: loading processor and model, and batched generation."""

from __future__ import annotations

from typing import Any

from PIL import Image

from loratrainer.caption import hub


class TransformersCaptioner:
    """An image-to-text model from transformers: a processor, a model with generate(), fixed generation settings."""

    def __init__(self, model_class: str, model: str, device: str | None, generate_kwargs: dict[str, Any]):
        import torch

        from loratrainer.compat import hide_broken_torchvision

        hide_broken_torchvision()  # a torchvision that does not match torch would break every transformers model
        import transformers

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
