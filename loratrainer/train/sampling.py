"""Sample images during training, as Kohya does (docs/kohya-compat.md section 5), without disturbing the run.

The loop calls `maybe_sample(t, first=True)` once before the first step, `maybe_sample(t)` after every
optimizer step and `maybe_sample(t, epoch_end=True)` after every epoch (each after that point's save; for
the last step and epoch, after the final file); this module decides whether a sample is due. The first call also reads and checks the prompts, so a bad prompt stops the run before any
training. Images are rendered on the main process with the LoRA as trained so far, through the family's diffusers
pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline: train/family.py) assembled from the trainer's own
models; the other processes wait.

Sampling must not change training: the RNG states (torch, CUDA, numpy, python), the models' train/eval
modes and requires_grad flags are restored afterwards, and the images come from a generator of their own,
seeded from the prompt, so that a run with samples trains exactly like one without.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from loratrainer.config import SamplingSettings
from loratrainer.files import atomic_write_with
from loratrainer.messages import Label, Msg
from loratrainer.run import notes as _notes  # noqa: F401  the codes of the warnings below (the page must know them)
from loratrainer.run import files as run_files
from loratrainer.run.files import SAMPLE_DIR, sample_name
from loratrainer.config.sample_prompts import SamplePrompt, load_prompts
from loratrainer.config.samplers import canonical_sampler
from loratrainer.train.samplers import build_scheduler
from loratrainer.train.setup import Trainer

log = logging.getLogger("loratrainer.train")


def sampling_on(s: SamplingSettings) -> bool:
    return bool(s.sample_every_n_steps or s.sample_every_n_epochs or s.sample_at_first)


def sample_due(s: SamplingSettings, step: int, epoch: int, *, epoch_end: bool = False, first: bool = False) -> bool:
    """sd-scripts' sample_images_common: the epoch setting wins over the step setting; step 0 is the
    sample before training, which a resumed run (already past step 0) does not repeat."""
    if first:
        return s.sample_at_first and step == 0
    if s.sample_every_n_epochs:
        return epoch_end and epoch % s.sample_every_n_epochs == 0
    return not epoch_end and s.sample_every_n_steps > 0 and step % s.sample_every_n_steps == 0


@dataclass
class SampleRun:
    """What one run samples: the prompts (random seeds drawn once, so every round shows the same noise)."""

    prompts: list[SamplePrompt]
    sampler: str  # the run's default, canonical


def maybe_sample(t: Trainer, *, epoch_end: bool = False, first: bool = False) -> list[Path]:
    """Render the sample images when they are due (call it on every process); returns the files written."""
    run = sample_run(t)
    if run is None or not sample_due(t.config.sampling, t.step, t.epoch, epoch_end=epoch_end, first=first):
        return []
    t.accelerator.wait_for_everyone()
    paths: list[Path] = []
    if t.accelerator.is_main_process:
        with t.run.in_phase("sampling"), untouched_training_state(t):
            paths = render_round(t, run, by_epoch=epoch_end)
    t.accelerator.wait_for_everyone()
    return paths


def sample_run(t: Trainer) -> SampleRun | None:
    """The run's sampling plan, read and checked on the first call (None = no sampling)."""
    if t.sampling == "unplanned":
        t.sampling = plan(t.config.sampling, t.components.noise_scheduler.config)
    return t.sampling


def plan(s: SamplingSettings, scheduler_config: Any) -> SampleRun | None:
    if not sampling_on(s):
        return None
    prompts = load_prompts(s.sample_prompts)
    if not prompts:
        log.warning("%s", Msg.of("train.no_sample_prompts", prompts=Label("sampling.sample_prompts")))
        return None
    default = canonical_sampler(s.sample_sampler)
    for name in {p.sampler or default for p in prompts}:  # e.g. lms without scipy: say so now, not at step 500
        build_scheduler(name, scheduler_config)
    entropy = random.SystemRandom()  # the OS's randomness: leaves the training RNGs alone
    prompts = [p if p.seed is not None else replace(p, seed=entropy.randint(1, 2**32 - 1)) for p in prompts]
    return SampleRun(prompts, default)


def render_round(t: Trainer, run: SampleRun, *, by_epoch: bool) -> list[Path]:
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    folder = Path(t.config.folders.output_dir) / SAMPLE_DIR
    paths = []
    for index, prompt in enumerate(run.prompts):
        if run_files.stop_requested(t.run_dir):  # a stop comes within seconds, not after the whole round
            log.info("stop requested: the remaining sample images of this round are skipped")
            break
        t.run.phase_progress("sampling", index, len(run.prompts))
        image = render(t, prompt, run.sampler)
        if image is None:  # stopped between denoising steps: no half-denoised image is written
            log.info("stop requested while a sample image rendered: it and the rest of this round are skipped")
            break
        assert prompt.seed is not None  # the plan drew a seed for every prompt without one
        path = folder / sample_name(t.config.folders.output_name, t.step, t.epoch, index, stamp, prompt.seed, by_epoch)
        atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"))
        announce(t, run, path, index, prompt, image)
        paths.append(path)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give the pipeline's activations back to training
    t.run.phase_progress("training")
    return paths


def render(t: Trainer, prompt: SamplePrompt, default_sampler: str):
    """One PIL image of `prompt` with the LoRA as trained so far; None when a stop was asked while it rendered
    (checked between denoising steps: a large sample on a slow machine took 90 s to notice one)."""
    c = t.components
    unet = t.accelerator.unwrap_model(t.unet)
    text_encoders = {name: t.accelerator.unwrap_model(m) for name, m in t.text_encoder_views().items()}
    scheduler = build_scheduler(prompt.sampler or default_sampler, c.noise_scheduler.config)
    pipe = t.family.pipeline(t, unet, text_encoders, scheduler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(prompt.seed)  # on the CPU: the same image on any device
    stopped = []

    def stop_between_steps(pipeline, step: int, timestep, tensors: dict) -> dict:
        if run_files.stop_requested(t.run_dir):
            pipeline._interrupt = True  # diffusers skips the remaining steps (the pipeline's `interrupt` property)
            stopped.append(step)
        return tensors

    with torch.no_grad(), t.accelerator.autocast(), text_encoders_on(t.accelerator.device, text_encoders.values()):
        embeds = t.family.prompt_arguments(t, text_encoders, prompt.prompt, prompt.negative_prompt)
        image = pipe(
            **embeds, width=prompt.width, height=prompt.height,
            num_inference_steps=prompt.steps, guidance_scale=prompt.cfg_scale, generator=generator,
            callback_on_step_end=stop_between_steps,
        ).images[0]
    return None if stopped else image


@contextmanager
def text_encoders_on(device: torch.device, models) -> Iterator[None]:
    """Text encoders moved off the GPU after caching their outputs (train/text_cache.py) come back for the round."""
    away = [(m, next(m.parameters()).device) for m in models if next(m.parameters()).device != device]
    for m, _ in away:
        m.to(device)
    try:
        yield
    finally:
        for m, where in away:
            m.to(where)


def announce(t: Trainer, run: SampleRun, path: Path, index: int, prompt: SamplePrompt, image) -> None:
    log.info("sample %s (step %d, epoch %d, seed %d): %s", path, t.step, t.epoch, prompt.seed, prompt.prompt)
    t.run.emit("sample", path=str(path), step=t.step, epoch=t.epoch, index=index, prompt=prompt.prompt, seed=prompt.seed)
    board = t.run.tensorboard
    if board is not None:
        board.add_image(f"sample/{index:02d}", np.asarray(image.convert("RGB")), t.step, dataformats="HWC")
        board.flush()


@contextmanager
def untouched_training_state(t: Trainer) -> Iterator[None]:
    """Run the body in eval mode and give training back its RNG states, modes and requires_grad flags."""
    models = [t.accelerator.unwrap_model(m) for m in (t.unet, *t.text_encoder_views().values())] + [t.components.vae]
    modes = [(module, module.training) for model in models for module in model.modules()]
    grads = [(p, p.requires_grad) for model in models for p in model.parameters()]
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    device = t.accelerator.device
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=gpus):
            for model in models:
                model.eval()  # no LoRA dropout in the samples
            yield
    finally:
        for module, training in modes:
            module.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
