"""How a run ended, as coded messages: the trainer puts one into its `ended` event (`msg`, beside the English
`reason` the CLI prints) and the GUI says it in the page's language. Torch-free: both sides import it.

`msg` is the sentence the page puts after its status sentence ("Out of GPU memory. {reason} Lower the batch
size..."): the facts of this run (step, file, where), not the advice, which the page's status sentence gives. The
codes are defined here (not in train/) because the GUI, which never imports the trainer, must know them.
"""

from __future__ import annotations

from pathlib import Path
from string import Formatter
from typing import Any

from loratrainer.messages import ENGLISH, Label, Msg, define
from loratrainer.run.events import RunState

define({
    "run.weights_nonfinite": "The LoRA weights became non-finite (NaN or infinite) in the update of step {step} (epoch {epoch}, learning rate {lr}), although the loss was finite: lower the learning rate or the network alpha{hint}. {file}",
    "run.weights_nonfinite.fp16_hint": ", or turn off full fp16 training (fp16 weights overflow above 65504)",
    "run.last_good_file": "The last good file is {file}.",
    "run.no_file": "No file was saved.",
    "run.nan_at": "It happened at step {step} (epoch {epoch}). {file}",
    "run.oom_at": "It happened {during} after {step} steps (batch size {batch}, resolution {resolution}).",
    "run.during.loading": "while the model loaded and latents were cached",
    "run.during.training": "in a training step",
    "run.during.sampling": "while sample images were made",
    "run.during.validation": "while the validation loss was computed",
    "run.during.saving": "while the LoRA was saved",
    "run.disk_full_at": "Could not write {path}.",
    "run.error_detail": "The error: `{detail}`",
    "train.folder_not_writable": "cannot write to {folder}: it became read-only or not writable during the run; the files saved before it are kept",
    # a plain stop has no coded reason in its `ended` event: the queue says where it stopped and what it saved
    "run.stopped_saved": "Stopped at step {step}; saved {file}.",
    "run.stopped_nothing_saved": "Stopped at step {step}; nothing was saved.",
})


# Refusals raised inside the trainer's torch modules (train/setup.py, train/state.py, train/samplers.py), defined here
# so the page and the terminal, which never import those modules, say them in their language when a run ends on one.
define({
    "sampler.unavailable": "the {name} sampler is not available here ({detail}); install what it names or choose another sampler, e.g. euler_a",
    "train.xformers_unavailable": "xformers attention is not available here ({detail}): choose precision.attention = sdpa",
    "state.not_a_state": "saving.resume: {folder} is not a saved training state (no {file}); choose a '-state' folder",
    "state.damaged": "saving.resume: {path} is damaged ({detail})",
    "state.steps_changed": "saving.resume: the state was saved with {saved} steps per epoch, this run has {now}: the dataset, batch size or processes changed",
    "state.incomplete": "saving.resume: {folder} is incomplete or damaged ({detail})",
    "state.other_network": "saving.resume: the saved LoRA does not match this network (rank, type or trained parts changed)",
})
# Settings the trainer refuses once the model is loaded (train/family.py, train/text_cache.py): defined here, not in
# the trainer's torch modules, because they end the run with their code in its `ended` event.
define({
    "train.fp8_needs_gpu": "{fp8} needs a CUDA GPU and {mixed} fp16 or bf16: turn {fp8} off here.",
    "train.fp8_unsupported": "{fp8} needs torch 2.1 or later with float8 support; this torch ({version}) has none: turn {fp8} off.",
    "train.text_cache_needs_frozen_text_encoder": "{cache} works only when no text encoder trains: set {te_lr} (and {te2_lr}) to 0, or turn {cache} off.",
    "train.text_cache_needs_static_captions": "{cache} needs the same caption every step: turn off {setting}, or turn {cache} off.",
})

# what the trainer's RunContext.phase says (train/entry.py, saving.py, sampling.py, validation.py) -> run.during.*
_DURING = {"loading": "run.during.loading", "training": "run.during.training", "sampling": "run.during.sampling",
           "validation": "run.during.validation", "saving": "run.during.saving"}


def nan_at(step: int, epoch: int, last_file: Path | str | None) -> Msg:
    """The loss (or a tensor being saved) became non-finite: where, and the last good file."""
    return Msg.of("run.nan_at", step=step, epoch=epoch,
                  file=Msg.of("run.last_good_file", file=str(last_file)) if last_file else Msg.of("run.no_file"))


def oom_at(phase: str, step: int, batch: int, resolution: object) -> Msg:
    """Out of memory: in which part of the run (the trainer's RunContext.phase), after how many finished steps."""
    during = next((code for start, code in _DURING.items() if phase.startswith(start)), "run.during.training")
    return Msg.of("run.oom_at", during=Msg.of(during), step=step, batch=batch, resolution=resolution)


def weights_nonfinite(step: int, epoch: int, lr: float, fp16: bool, last_file: Path | str | None) -> Msg:
    """The update of a step (not its loss) made the LoRA weights NaN or infinite (train/loop.py NonFiniteWeights)."""
    return Msg.of("run.weights_nonfinite", step=step, epoch=epoch, lr=f"{lr:.3g}",
                  hint=Msg.of("run.weights_nonfinite.fp16_hint") if fp16 else "",
                  file=Msg.of("run.last_good_file", file=str(last_file)) if last_file else Msg.of("run.no_file"))


def to_event(msg: Msg) -> dict[str, Any]:
    """A message as JSON for the event stream (parameters that are messages nest; a setting named by a Label is
    `{"label": path}`, so the page names it by its on-screen label; anything else is said as text)."""
    return {"code": msg.code, "params": {k: _param(v) for k, v in msg.params.items()}}


def _param(value: Any) -> Any:
    if isinstance(value, Msg):
        return to_event(value)
    if isinstance(value, Label):
        return {"label": value.path}
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def from_event(data: object) -> Msg | None:
    """The message an event carries (`ended`, `note`); None when there is none or it is not one of ours (an older or
    newer trainer's, or a code this process does not know), so the page falls back to the English text."""
    if not isinstance(data, dict) or data.get("code") not in ENGLISH or not isinstance(data.get("params"), dict):
        return None
    if {name for _, name, _, _ in Formatter().parse(ENGLISH[data["code"]]) if name} - set(data["params"]):
        return None  # a parameter is missing: the template could not be filled
    params: dict[str, Any] = {}
    for k, v in data["params"].items():
        if isinstance(v, dict) and set(v) == {"label"} and isinstance(v["label"], str):
            params[k] = Label(v["label"])
            continue
        params[k] = from_event(v) if isinstance(v, dict) else v
        if params[k] is None:
            return None
    return Msg(data["code"], params)


def queue_reason(state: RunState) -> Msg | str | None:
    """Why a run ended, in one sentence, as the queue says it (the GUI's Queue column, `loratrainer queue list`, the
    reason the runner records): the `ended` event's coded reason, where a plain stop stopped and what it saved, or the
    English reason of a trainer older than coded reasons (or one whose code this process does not know); "" for a
    finished run; None while the events hold no `ended` event."""
    if not state.done:
        return None
    if state.status == "finished":
        return ""
    said = from_event(state.msg)
    if said is not None:
        return said
    if state.status == "stopped":
        saved = [Path(str(e.get("path", ""))).name for e in state.checkpoints if e.get("kind") == "interrupted"]
        return Msg.of("run.stopped_saved", step=state.step, file=saved[-1]) if saved else Msg.of("run.stopped_nothing_saved", step=state.step)
    return state.reason or None
