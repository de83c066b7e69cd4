"""What a run is doing before and between its steps, in words: "caching latents 240/1,870, 3 min left".

The trainer sends `phase` events (loratrainer/run/events.py folds them into RunState.phase, phase_done, phase_total,
phase_eta_s); the page (gui/run_view.py) and `loratrainer train` (launch/follow.py) say them with these coded
messages, so a long model load or latent cache no longer reads "step 0/?". Torch-free, for both sides.
"""

from __future__ import annotations

from loratrainer.run.events import RunState
from loratrainer.messages import Msg, define

define({
    "phase.loading_model": "loading the model",
    "phase.caching_latents": "caching latents {done}/{total}",
    "phase.caching_text": "caching text-encoder outputs {done}/{total}",
    "phase.sampling": "making sample image {done} of {total}",
    "phase.saving": "saving the LoRA",
    "phase.with_time_left": "{phase}, {left} left",
    "duration.seconds": "{n} s",
    "duration.minutes": "{n} min",
    "duration.hours": "{h} h {m} min",
    "run.stopped_before_training": "Stopped before the first training step: nothing was trained, so nothing was saved.",
})

# The `ended` reason the trainer gives a run stopped while it loaded or cached (train/entry.py writes it, the page and
# the CLI recognise it and say run.stopped_before_training in their language).
STOPPED_BEFORE_TRAINING = "stopped before the first training step: nothing was trained, so nothing was saved"
COUNTED = ("caching_latents", "caching_text", "sampling")


def phase_message(state: RunState) -> Msg | None:
    """The phase in words, or None while training steps (the step count says it) or when nothing is known."""
    phase = state.phase
    if not phase or phase == "training":
        return None
    if phase in COUNTED:
        if state.phase_total is None:
            return None
        done = state.phase_done or 0
        if phase == "sampling":  # the image being made: the first is 1 of N
            done = min(done + 1, state.phase_total)
        msg = Msg.of(f"phase.{phase}", done=f"{done:,}", total=f"{state.phase_total:,}")
    elif f"phase.{phase}" in _KNOWN:
        msg = Msg.of(f"phase.{phase}")
    else:
        return None
    if state.phase_eta_s is not None and phase != "sampling" and (state.phase_done or 0) < (state.phase_total or 0):
        return Msg.of("phase.with_time_left", phase=msg, left=duration(state.phase_eta_s))
    return msg


_KNOWN = {"phase.loading_model", "phase.saving"}


def phase_fraction(state: RunState) -> float | None:
    if state.phase in COUNTED and state.phase_total:
        return min(1.0, (state.phase_done or 0) / state.phase_total)
    return None


def duration(seconds: float) -> Msg:
    """About how long: "40 s", "3 min", "1 h 5 min" (rounded up to the minute above a minute)."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return Msg.of("duration.seconds", n=seconds)
    minutes = -(-seconds // 60)
    if minutes < 60:
        return Msg.of("duration.minutes", n=minutes)
    return Msg.of("duration.hours", h=minutes // 60, m=minutes % 60)


def stopped_before_training(state: RunState) -> bool:
    return state.status == "stopped" and state.reason == STOPPED_BEFORE_TRAINING
