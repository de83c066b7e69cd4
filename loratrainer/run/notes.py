"""What the trainer tells about a run while it goes, besides its progress: the precision it used when that is not the
one asked, the config's own notes, and its warnings. Each is a `note` event (docs/architecture.md, "Events") with a
coded message, so the page says it in its language; train.log keeps the English line.

The codes are defined here, not in train/, because the GUI (which never imports the trainer) must know them to
say them. Torch-free: both sides import it.
"""

from __future__ import annotations

from typing import Any

from loratrainer.messages import Label, Msg, define
from loratrainer.run.outcomes import to_event

define({
    "train.precision_off": "{mixed} {precision} is off on this machine: training in {used}.",
    "train.precision_off_cpu": "No CUDA GPU: {mixed} {precision} is off, training in fp32 on the CPU (fp16 autocast needs a GPU).",
    "train.precision_off_mps_fp16": "No CUDA GPU: {mixed} {precision} is off, training in fp32 on the Apple GPU (mps): this PyTorch has no float16 autocast there (PyTorch 2.5 or newer has).",
    "train.precision_off_mps_bf16": "No CUDA GPU: {mixed} {precision} is off, training in fp32 on the Apple GPU (mps): bfloat16 there needs macOS 14 or newer.",
    "train.clip_skip_not_used": "{clip_skip} {value} does not apply to {family}: both text encoders give their penultimate layer.",
    "train.low_resolution": "Training {family} at {side} px, well below the {native} px it was trained at.",
    "train.no_sample_prompts": "Sample images are switched on but {prompts} holds no prompt: no samples will be made.",
    "train.diffusers_copy_exists": "{folder} exists: the diffusers-format copy was not written.",
    "train.prediction_mismatch_on": "The model says it predicts {declared} but {v_param} is on: sd-scripts trains as the setting says, and so do we.",
    "train.prediction_mismatch_off": "The model says it predicts {declared} but {v_param} is off: sd-scripts trains as the setting says, and so do we.",
    "train.cache.latents": "latents",
    "train.cache.text": "text encoder outputs",
    "train.cache_not_ours": "{path} was not written by loratrainer: left untouched, the {what} are kept in memory.",
    "train.cache_not_written": "Could not write the {what} cache {path} ({error}): it is kept in memory.",
    "train.owner_gone": "The process that started this run (pid {pid}) is gone: stopping as on Stop.",
})

LEVELS = ("note", "warning")  # a note: the run does otherwise than asked, as it should; a warning: something is off


def precision_off(asked: str, why: str) -> Msg:
    """The mixed precision asked is off on this machine (train/device.py); `why` is "cpu", "mps_fp16" or "mps_bf16"."""
    return Msg.of(f"train.precision_off_{why}", mixed=Label("precision.mixed_precision"), precision=asked)


def precision_changed(asked: str, used: str) -> Msg:
    """accelerate runs another precision than asked for a reason train/device.py did not foresee."""
    return Msg.of("train.precision_off", mixed=Label("precision.mixed_precision"), precision=asked, used="fp32" if used == "no" else used)


def note_event(msg: Msg | None, text: str, level: str = "warning") -> dict[str, Any]:
    """The fields of a `note` event: the coded message where there is one, and always the English text."""
    return {"level": level, "text": text, **({"msg": to_event(msg)} if msg is not None else {})}
