"""A run as the page shows it: the status line in words, the progress bar, the loss chart data, the samples.

Pure functions of a JobView and a translator, so they are tested without a browser.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from loratrainer.gui.i18n import Translator, md
from loratrainer.gui.jobs import JobView
from loratrainer.launch import run_messages as _run_messages  # noqa: F401  every code a run's events carry
from loratrainer.run import outcomes
from loratrainer.run.events import RunState
from loratrainer.run.files import STOP_FILE, STOP_NOW_FILE, checkpoint_name
from loratrainer.run.phases import phase_fraction, phase_message, stopped_before_training
from loratrainer.messages import Msg

FAILED = ("nan", "oom", "disk_full", "error")
MAX_CHART_POINTS = 500


def status_line(view: JobView | None, t: Translator) -> str:
    """One sentence: what the run is doing, or how it ended and what to do about it."""
    if view is None:
        return t("status.idle")
    s = view.state
    if view.alive:
        from loratrainer.run.files import stop_requested

        if stop_requested(view.run_dir):  # until the trainer has saved and ended, however long that takes
            if s.status == "starting":  # nothing trained yet: nothing is saved
                text = t("status.stopping_early")
            else:
                text = t("status.stopping", file=interrupted_file(view))
            if stop_waited(view) >= STOP_NOW_AFTER_S:
                text += " " + t("status.stop_slow", seconds=int(stop_waited(view)))
            return text
        phase = phase_message(s)
        if s.status == "starting" or not s.total_steps:
            return t("status.preparing", phase=t.message(phase)) if phase is not None else t("status.starting")
        running = t("status.running", step=s.step, total=s.total_steps, epoch=s.epoch, epochs=s.epochs)
        return running + (" " + t("status.phase_now", phase=t.message(phase)) if phase is not None else "")
    outcome = view.outcome
    said = outcomes.from_event(s.msg) if s.done else None
    if said is not None and said.code == "run.weights_nonfinite":  # the weights, not the loss: its own whole sentence
        return t("status.nan_weights", message=md(t.message(said)))
    if outcome not in ("finished", "stopped", "nan", "oom", "disk_full") and (view.run_dir / STOP_NOW_FILE).exists():
        # killed by the page's Stop now, as asked (no `ended` event: the outcome reads killed or error)
        return t("run.stopped_now")
    reason = ended_reason(s, t)
    if outcome == "finished":
        return t("status.finished")
    if outcome == "stopped":
        if stopped_before_training(s):
            return t.message(Msg.of("run.stopped_before_training"))
        return t("status.stopped", step=s.step, reason=reason, file=interrupted_path(view)) + resume_hint(view, t)
    if outcome in FAILED:
        return t(f"status.{outcome}", reason=reason)
    signal = re.search(r"signal (\d+)", outcome)
    if outcome.startswith("killed"):
        # "killed (signal 9)" says "killed" itself: the detail is the signal alone, said once (issue 22)
        return t("status.killed", detail=t("reason.signal", n=signal.group(1)) if signal else outcome)
    code = re.search(r"exit code (-?\d+)", outcome)
    if t.lang != "en" and code:
        return t("status.error", reason=t("reason.exit_code", code=code.group(1)))
    return t("status.error", reason=md(outcome))


def ended_reason(state: RunState, t: Translator) -> str:
    """Why the run ended, in the page's language: the `ended` event's coded reason (run/outcomes.py; the status
    sentence around it gives the advice). A run written before reasons were coded (or one whose code this GUI does not
    know) has only the trainer's English reason: the English page says it as it is, another quotes it as a detail."""
    said = outcomes.from_event(state.msg)
    if said is not None:
        return md(t.message(said))
    if not state.reason:
        return ""
    return md(state.reason) if t.lang == "en" else t("reason.detail", detail=md(state.reason).replace("`", "'"))


# Stop now (end the run without saving) is offered once a stop has waited this long: a save takes seconds, a stop
# checked between images or sampling steps comes within seconds, so longer means the trainer is stuck somewhere.
STOP_NOW_AFTER_S = 15.0


def stop_waited(view: JobView) -> float:
    """Seconds since the STOP file was written (0 when there is none)."""
    import time

    try:
        return max(0.0, time.time() - (view.run_dir / STOP_FILE).stat().st_mtime)
    except OSError:
        return 0.0


def offers_stop_now(view: JobView | None) -> bool:
    return bool(view and view.alive and stop_waited(view) >= STOP_NOW_AFTER_S)


def resume_state(view: JobView | None) -> str:
    """The state folder saved with the run's interrupted file (save_state on), which Resume fills in."""
    if view is None or view.alive or view.outcome != "stopped":
        return ""
    interrupted = {str(e.get("path", "")) for e in view.checkpoints if e.get("kind") == "interrupted"}
    for e in reversed(view.states):
        path = str(e.get("path", ""))
        if any(path == str(Path(f).with_name(Path(f).stem + "-state")) for f in interrupted) and Path(path).is_dir():
            return path
    return ""


def resume_hint(view: JobView, t: Translator) -> str:
    state = resume_state(view)
    return " " + (t("status.resume_offer", state=state) if state else t("status.resume_no_state"))


def interrupted_path(view: JobView) -> str:
    """The interrupted file with its folder (where to find it), from the checkpoint event."""
    for e in reversed(view.checkpoints):
        if e.get("kind") == "interrupted":
            return str(e.get("path", ""))
    return interrupted_file(view)


def interrupted_file(view: JobView) -> str:
    """The name of the file Stop saves: from the checkpoint event, else from the run's output name (the started
    event's; a run of an older trainer: its run folder's name, `<output_name>_<YYYYmmdd-HHMMSS>[-N]`)."""
    for e in reversed(view.checkpoints):
        if e.get("kind") == "interrupted":
            return Path(str(e.get("path", ""))).name
    name = str(view.state.started.get("output_name") or view.run_dir.name.rpartition("_")[0] or view.run_dir.name)
    return checkpoint_name(name, "interrupted", None)


def status_kind(view: JobView | None) -> str:
    if view is None:
        return "idle"
    if view.alive:
        return "running"
    return view.outcome.split(" ")[0]


def progress_html(view: JobView | None, t: Translator) -> str:
    if view is None:
        return ""
    s = view.state
    percent = 100.0 * s.fraction
    phase = phase_message(s) if view.alive else None
    if not s.total_steps:  # loading or caching: its count, never "step 0/?" (nor after a run stopped before step 1)
        percent = 100.0 * (phase_fraction(s) or 0.0)
        text = t.message(phase) if phase is not None else ""
        return (
            f'<div id="lt-progress-text" data-status="{html.escape(status_kind(view))}" data-phase="{html.escape(s.phase)}" '
            f'data-step="0">{html.escape(text)}</div>'
            + (f'<div class="lt-progress"><div style="width:{percent:.1f}%"></div></div>' if phase is not None else "")
        )
    parts = [t("progress.step", step=s.step, total=s.total_steps or "?"), t("progress.epoch", epoch=s.epoch, epochs=s.epochs or "?")]
    if s.it_per_s:
        parts.append(t("progress.speed", speed=f"{s.it_per_s:.2f}"))
    if s.eta_s is not None and view.alive:
        parts.append(t("progress.eta", eta=format_duration(s.eta_s)))
    if s.loss is not None:
        parts.append(t("progress.loss", loss=f"{(s.avg_loss if s.avg_loss is not None else s.loss):.4f}"))
    text = " · ".join(parts)
    return (
        f'<div id="lt-progress-text" data-status="{html.escape(status_kind(view))}" data-step="{s.step}">{html.escape(text)}</div>'
        f'<div class="lt-progress"><div style="width:{percent:.1f}%"></div></div>'
    )


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def loss_frame(view: JobView | None, t: Translator | None = None):
    """The chart's points: the training loss, then the validation loss (train/validation.py) as a second line
    (`series` picks the line's colour)."""
    import pandas as pd

    points = view.state.loss_history if view else []
    if len(points) > MAX_CHART_POINTS:  # a long run: every k-th point keeps the chart light to resend each second
        k = -(-len(points) // MAX_CHART_POINTS)
        points = points[::k] + ([points[-1]] if (len(points) - 1) % k else [])
    validation = [(step, loss) for step, _, loss in view.state.validation_history] if view else []
    train_name, val_name = (t("run.chart_train"), t("run.chart_validation")) if t else ("training", "validation")
    return pd.DataFrame({"step": [p[0] for p in points] + [v[0] for v in validation],
                         "loss": [p[1] for p in points] + [v[1] for v in validation],
                         "series": [train_name] * len(points) + [val_name] * len(validation)})


def sample_gallery(view: JobView | None, display, t: Translator) -> list[tuple[str, str]]:
    """(display copy, caption) for each sample image, newest first."""
    if view is None:
        return []
    out = []
    for e in reversed(view.samples):
        path = display.copy(e.get("path", ""))
        if path:
            caption = t("samples.caption", epoch=e.get("epoch", "?"), step=e.get("step", "?"), prompt=str(e.get("prompt", ""))[:80])
            out.append((path, caption))
    return out


def sample_name(path: str) -> str:
    return Path(path).name


def run_notes(view: JobView | None, t: Translator) -> str:
    """What the run does otherwise than asked and what the trainer warned about, from its `note` events: the precision
    used, the config's notes and the trainer's warnings, coded (the page's language and labels). A warning without a
    code (a library's, logged through ours) is the trainer's English line, listed apart. A run of an older trainer
    wrote no notes: the page shows none for it (its status and log still show)."""
    if view is None:
        return ""
    coded: list[str] = []
    plain: list[str] = []
    for e in view.state.notes:
        said = outcomes.from_event(e.get("msg"))
        if said is not None:
            coded.append(t.message(said))
        elif e.get("text"):
            plain.append(str(e["text"]))
    if not coded and not plain:
        return ""
    text = t("run.notes") + "\n" + "\n".join(f"- {md(note)}" for note in coded[:8]) if coded else ""
    if plain:
        text += ("\n\n" if text else "") + t("run.notes_log") + "\n" + "\n".join(f"- {md(line)}" for line in plain[:8])
    return text
