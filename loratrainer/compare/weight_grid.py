"""The epoch x LoRA-weight grid: each chosen LoRA file at each weight, for each prompt, with one fixed seed, on
the run's base model. Weight 0 renders with the LoRA switched off (the base model), so that column must be the
same image in every row: it shows that the seed is fixed and the rows differ only by the LoRA.

diffusers does the work: the base model loaded as the trainer loads it (model.components.load_components: SD1.5
or SDXL, told from the model's own files), the pipeline the trainer samples that family with
(train/family.py: StableDiffusionPipeline or StableDiffusionXLPipeline), `load_lora_weights(file, adapter_name=...)`
per file (it reads our Kohya SD1.5 and SDXL files), `set_adapters([name], [weight])`
per cell and `disable_lora()` for weight 0. Run by `loratrainer compare` (the GUI starts that in a process of its
own, so a long render never blocks the page)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from loratrainer.compare.canvas import labelled_grid
from loratrainer.files import atomic_write, atomic_write_with


@dataclass
class GridRequest:
    files: list[Path]
    labels: list[str]  # one per file: "epoch 3", ...
    weights: list[float]
    prompts: list[str]
    model: str
    seed: int = 1234
    steps: int = 20
    width: int = 512
    height: int = 512
    cfg_scale: float = 7.0
    sampler: str = "euler_a"
    negative_prompt: str = ""
    vae: str = ""
    clip_skip: int = 1  # as in the training config: 1 = the last layer
    v_parameterization: bool = False
    model_family: str = "auto"  # the run's Model family setting: "auto" tells it from the model's files
    extra: dict = field(default_factory=dict)

    @property
    def cells(self) -> int:
        return len(self.files) * len(self.prompts) * len(self.weights)


def weight_label(weight: float) -> str:
    return "weight 0 (base model)" if weight == 0 else f"weight {weight:g}"


def load_pipeline(request: GridRequest):
    import torch

    from loratrainer.config import ModelSettings
    from loratrainer.model.components import load_components
    from loratrainer.train.family import family_for
    from loratrainer.train.samplers import build_scheduler

    settings = ModelSettings(pretrained_model_name_or_path=request.model, vae=request.vae, v_parameterization=request.v_parameterization,
                             model_family=request.model_family)
    c = load_components(settings, dtype=torch.float32)
    family = family_for(c)
    pipe = family.pipeline_of(c, c.unet, {name: getattr(c, name) for name in family.text_encoders},
                              build_scheduler(request.sampler, c.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    # SDXL's pipeline always takes the penultimate layer, as its training does (train/family.py: uses_clip_skip)
    pipe.loratrainer_clip_skip = request.clip_skip if family.uses_clip_skip else 1
    if torch.cuda.is_available():
        pipe.to("cuda")
    return pipe


def render_cell(pipe, request: GridRequest, prompt: str):
    import torch

    clip_skip = getattr(pipe, "loratrainer_clip_skip", request.clip_skip)
    generator = torch.Generator("cpu").manual_seed(request.seed)  # on the CPU: the same noise on any device
    with torch.no_grad():
        return pipe(
            prompt=prompt, negative_prompt=request.negative_prompt or None, width=request.width, height=request.height,
            num_inference_steps=request.steps, guidance_scale=request.cfg_scale, generator=generator,
            clip_skip=clip_skip - 1 if clip_skip > 1 else None,  # diffusers counts the layers skipped
        ).images[0]


def render_grid(request: GridRequest, target: Path, progress: Callable[[int, int, str], None] = lambda done, total, what: None,
                pipe=None) -> Path:
    """Render every cell, write `target` (PNG) and `target.json`; `progress(done, total, what)` after each cell."""
    pipe = pipe or load_pipeline(request)
    total, done = request.cells, 0
    cells, row_labels = [], []
    for i, (path, label) in enumerate(zip(request.files, request.labels)):
        adapter = f"lora{i}"
        pipe.load_lora_weights(str(path), adapter_name=adapter)
        try:
            for prompt in request.prompts:
                row = []
                for weight in request.weights:
                    if weight == 0:
                        pipe.disable_lora()  # the base model, not a LoRA scaled by 0.0
                    else:
                        pipe.enable_lora()
                        pipe.set_adapters([adapter], [weight])
                    row.append(render_cell(pipe, request, prompt))
                    done += 1
                    progress(done, total, f"{label}, {weight_label(weight)}")
                cells.append(row)
                row_labels.append(label if len(request.prompts) == 1 else f"{label}: {prompt}")
        finally:
            pipe.enable_lora()
            pipe.delete_adapters([adapter])
    title = f"seed {request.seed}, {request.steps} steps, {request.sampler}, {request.width}x{request.height}"
    if len(request.prompts) == 1:
        title = f"{request.prompts[0]} ({title})"
    image, boxes = labelled_grid(cells, row_labels, [weight_label(w) for w in request.weights], title=title,
                                 cell_size=(request.width, request.height))
    target = Path(target)
    atomic_write_with(target, lambda tmp: image.save(tmp, "PNG"))
    sidecar = {**asdict(request), "files": [str(p) for p in request.files], "rows": row_labels,
               "columns": [weight_label(w) for w in request.weights], "cells": boxes}
    sidecar.pop("extra")
    sidecar.update(request.extra)
    atomic_write(sidecar_path(target), json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n")
    return target


def sidecar_path(target: Path) -> Path:
    return Path(target).with_suffix(".json")
