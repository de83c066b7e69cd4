"""How a run ended, as coded messages: the trainer puts one into its `ended` event (`msg`, beside the English
`reason` the CLI prints) and the GUI says it in the page's language. Torch-free: both sides import it.
"""

from __future__ import annotations

from pathlib import Path
from string import Formatter
from typing import Any

from loratrainer.messages import ENGLISH, Msg, define

define({
    "run.weights_nonfinite": "The LoRA weights became non-finite (NaN or infinite) in the update of step {step} (epoch {epoch}, learning rate {lr}), although the loss was finite: lower the learning rate or the network alpha{hint}. {file}",
    "run.weights_nonfinite.fp16_hint": ", or turn off full fp16 training (fp16 weights overflow above 65504)",
    "run.last_good_file": "The last good file is {file}.",
    "run.no_file": "No file was saved.",
})


def weights_nonfinite(step: int, epoch: int, lr: float, fp16: bool, last_file: Path | str | None) -> Msg:
    """The update of a step (not its loss) made the LoRA weights NaN or infinite (train/loop.py NonFiniteWeights)."""
    return Msg.of("run.weights_nonfinite", step=step, epoch=epoch, lr=f"{lr:.3g}",
                  hint=Msg.of("run.weights_nonfinite.fp16_hint") if fp16 else "",
                  file=Msg.of("run.last_good_file", file=str(last_file)) if last_file else Msg.of("run.no_file"))


def to_event(msg: Msg) -> dict[str, Any]:
    """A message as JSON for the event stream (parameters that are messages nest)."""
    return {"code": msg.code, "params": {k: to_event(v) if isinstance(v, Msg) else v for k, v in msg.params.items()}}


def from_event(data: object) -> Msg | None:
    """The message an `ended` event carries; None when there is none or it is not one of ours (an older or newer
    trainer's), so the page falls back to the status and the English reason."""
    if not isinstance(data, dict) or data.get("code") not in ENGLISH or not isinstance(data.get("params"), dict):
        return None
    if {name for _, name, _, _ in Formatter().parse(ENGLISH[data["code"]]) if name} - set(data["params"]):
        return None  # a parameter is missing: the template could not be filled
    params = {}
    for k, v in data["params"].items():
        params[k] = from_event(v) if isinstance(v, dict) else v
        if params[k] is None:
            return None
    return Msg(data["code"], params)
