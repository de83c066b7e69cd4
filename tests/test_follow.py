"""`loratrainer train` following a run in the terminal: the run's notes once each as they arrive, and how it ended as
the `ended` event's coded reason (the CLI has no language setting: the coded messages are said in English), all
through the one RunReader the page uses."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

from loratrainer.launch.follow import _Bar, _Lines, _report_end, end_line, note_line
from loratrainer.messages import Msg
from loratrainer.run import events, notes, outcomes


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _precision_note() -> dict:
    msg = notes.precision_off("fp16", "cpu")
    return notes.note_event(msg, "fp16 is off: training in fp32 on the CPU (train.log's own wording)")


def test_the_terminal_says_each_note_once_as_it_arrives_in_the_order_the_run_wrote_it(tmp_path):
    writer = events.EventWriter(tmp_path / "events.jsonl")
    reader = events.RunReader(tmp_path)
    out = io.StringIO()
    view = _Lines(out)
    writer.emit("note", **_precision_note())
    view.update(reader.read(), reader.new)
    said = "warning: No CUDA GPU: precision.mixed_precision fp16 is off, training in fp32 on the CPU (fp16 autocast needs a GPU)."
    assert out.getvalue().splitlines() == [said]  # the coded message in English (a setting named by its path)

    writer.emit("started", total_steps=4, epochs=1, seed=1)
    writer.emit("progress", step=1, total_steps=4, epoch=1, epochs=1, loss=0.5, avg_loss=0.5, lr=1e-4)
    writer.emit("note", **_precision_note())  # logged again (say, once per cached image): one note
    writer.emit("note", **notes.note_event(None, "a library's own warning"))  # not coded: its English line
    writer.emit("note", **notes.note_event(Msg.of("train.no_sample_prompts", prompts="sample_prompts"), "x", level="note"))
    writer.emit("progress", step=2, total_steps=4, epoch=1, epochs=1, loss=0.25, avg_loss=0.4, lr=1e-4)
    view.update(reader.read(), reader.new)
    writer.close()
    view.update(reader.read(), reader.new)  # nothing new: nothing said again
    assert out.getvalue().splitlines() == [
        said,
        "started: 4 steps, 1 epochs, seed 1",
        "step 1/4 epoch 1/1 loss 0.5000 lr 0.0001",
        "warning: a library's own warning",
        "note: Sample images are switched on but sample_prompts holds no prompt: no samples will be made.",
        "step 2/4 epoch 1/1 loss 0.2500 lr 0.0001",
    ]


def test_on_a_terminal_a_note_is_said_above_the_phase_line_and_the_bar(tmp_path):
    writer = events.EventWriter(tmp_path / "events.jsonl")
    reader = events.RunReader(tmp_path)
    out = Tty()
    view = _Bar(out)
    writer.emit("phase", phase="loading_model")
    writer.emit("note", **_precision_note())
    view.update(reader.read(), reader.new)
    writer.emit("started", total_steps=4, epochs=1, seed=1)
    writer.emit("progress", step=1, total_steps=4, epoch=1, epochs=1, loss=0.5, avg_loss=0.5, lr=1e-4)
    writer.emit("note", **notes.note_event(None, "a late warning"))
    writer.emit("note", **_precision_note())
    view.update(reader.read(), reader.new)
    view.close()
    writer.close()
    text = out.getvalue()
    assert text.count("No CUDA GPU") == 1 and text.count("warning: a late warning\n") == 1, text
    assert text.index("No CUDA GPU") < text.index("loading the model"), text  # said, then the phase line again
    assert "\rwarning: No CUDA GPU" in text  # over the phase line rewritten in place, not after it on its line


def test_the_config_s_notes_printed_before_the_run_are_not_said_again(tmp_path):
    """`loratrainer train` prints the config's notes before it starts the run; the trainer sends them as `note` events for
    the page (train/reporting.report_config_notes): the terminal says them once."""
    from loratrainer.config import TrainingConfig, with_values

    config = with_values(TrainingConfig(), {"text_encoder_lr": 0})  # a UNet-only LoRA: one of the config's notes
    assert config.summary()
    writer = events.EventWriter(tmp_path / "events.jsonl")
    for note in config.summary_messages():
        writer.emit("note", **notes.note_event(note, str(note), level="note"))
    writer.emit("note", **_precision_note())
    writer.close()
    reader = events.RunReader(tmp_path)
    state = reader.read()
    for view in (_Lines(io.StringIO(), set(config.summary())), _Bar(Tty(), set(config.summary()))):
        view.update(state, reader.new)
        text = view.stream.getvalue()
        assert "No CUDA GPU" in text and not any(line in text for line in config.summary()), text


def _ended(status: str, reason: str, msg: Msg | None, **extra) -> events.RunState:
    e = {"event": "ended", "status": status, "reason": reason, "step": 3, "epoch": 1, "exit_code": events.EXIT_CODES[status], **extra}
    if msg is not None:
        e["msg"] = outcomes.to_event(msg)
    return events.summarize([e])


def test_the_end_is_said_by_its_coded_reason(tmp_path):
    oom = _ended("oom", "out of GPU memory during training at batch size 2, resolution 512: lower train_batch_size",
                 outcomes.oom_at("training", 3, 2, 512))
    assert end_line(oom) == "out of memory: It happened in a training step after 3 steps (batch size 2, resolution 512)."
    out = io.StringIO()
    _report_end(SimpleNamespace(run_dir=tmp_path), oom, events.EXIT_CODES["oom"], out)
    lines = out.getvalue().splitlines()
    # the facts, then the trainer's advice for this config (which the coded reason leaves to the status sentence)
    assert lines[:2] == [end_line(oom), "  out of GPU memory during training at batch size 2, resolution 512: lower train_batch_size"]

    full = _ended("disk_full", "disk full: /o/x.safetensors", Msg.of("run.disk_full_at", path="/o/x.safetensors"))
    assert end_line(full) == "disk full: Could not write /o/x.safetensors."
    # a trainer older than coded reasons, or a code this process does not know: its English reason, said once
    old = _ended("disk_full", "disk full: /o/x.safetensors", None)
    assert end_line(old) == "disk full: /o/x.safetensors"
    unknown = events.summarize([{"event": "ended", "status": "error", "reason": "SomeError: boom", "step": 0, "epoch": 0,
                                 "msg": {"code": "no.such.code", "params": {}}}])
    assert end_line(unknown) == "error: SomeError: boom"
    # a model the trainer refused (model/errors.py, torch-free): the coded message itself
    refused = Msg.of("model.sdxl.not_sdxl", path="/m/a.safetensors", family="SD1.5")
    assert end_line(_ended("error", str(refused), refused)) == f"error: {refused}"
    # a plain stop has no coded reason: the headline alone
    assert end_line(_ended("stopped", "", None)) == "stopped"


def test_note_line_falls_back_to_the_english_text():
    assert note_line({"level": "warning", "text": "plain", "msg": {"code": "no.such.code", "params": {}}}) == "warning: plain"
    assert note_line({"level": "note", "text": "x", "msg": outcomes.to_event(Msg.of("train.owner_gone", pid=7))}) == \
        "note: The process that started this run (pid 7) is gone: stopping as on Stop."


def test_follow_says_the_notes_and_the_coded_end_of_a_real_process(tmp_path, monkeypatch):
    """Through `follow` itself, with a stand-in trainer that writes a run's events and exits with its code."""
    import json

    from loratrainer.config import TrainingConfig, with_values
    from loratrainer.launch import start as launch
    from loratrainer.launch.follow import follow

    note = json.dumps({"event": "note", **_precision_note()})
    ended = json.dumps({"event": "ended", "status": "nan", "reason": "Loss is NaN at step 3. No file was saved.", "step": 3,
                        "epoch": 1, "exit_code": 11, "msg": outcomes.to_event(outcomes.nan_at(3, 1, None))})
    script = ("import sys; p = sys.argv[1] + '/events.jsonl'\n"
              f"lines = [{note!r}, {note!r}, {ended!r}]\n"
              "open(p, 'a').write(''.join(line + '\\n' for line in lines))\n"
              "sys.exit(11)\n")
    monkeypatch.setattr(launch, "build_command", lambda config, run_dir: [sys.executable, "-c", script, str(run_dir)])
    config = with_values(TrainingConfig(), {"output_dir": str(tmp_path / "out"), "train_data_dir": str(tmp_path)})
    run = launch.start_run(config, check=False)
    out = io.StringIO()
    assert follow(run, out, poll_s=0.05) == events.EXIT_CODES["nan"]
    text = out.getvalue()
    assert text.count("warning: No CUDA GPU: precision.mixed_precision fp16 is off") == 1, text
    assert "NaN at step 3: It happened at step 3 (epoch 1). No file was saved.\n" in text, text


def test_the_queue_runner_says_each_run_s_notes_once_and_its_coded_end(tmp_path, monkeypatch):
    """`loratrainer queue run` (launch/queue_runner.py) says the running item's notes as they arrive and records and says
    how it ended with the same sentence `queue list` and the page's Queue column show."""
    import json

    from loratrainer.config import TrainingConfig, with_values
    from loratrainer.launch import start as launch
    from loratrainer.launch.queue_runner import run_queue
    from loratrainer.launch.run_queue import RunQueue

    note = json.dumps({"event": "note", **_precision_note()})
    late = json.dumps({"event": "note", **notes.note_event(Msg.of("train.owner_gone", pid=7), "gone", level="warning")})
    ended = json.dumps({"event": "ended", "status": "nan", "reason": "Loss is NaN at step 3. No file was saved.", "step": 3,
                        "epoch": 1, "exit_code": 11, "msg": outcomes.to_event(outcomes.nan_at(3, 1, None))})
    script = ("import sys, time; p = sys.argv[1] + '/events.jsonl'\n"
              "def emit(*lines):\n    open(p, 'a').write(''.join(line + '\\n' for line in lines))\n"
              f"emit({note!r}, {note!r})\ntime.sleep(0.3)\nemit({note!r}, {late!r}, {ended!r})\nsys.exit(11)\n")
    monkeypatch.setattr(launch, "build_command", lambda config, run_dir: [sys.executable, "-c", script, str(run_dir)])
    start_run = launch.start_run
    monkeypatch.setattr(launch, "start_run", lambda config: start_run(config, check=False))
    queue = RunQueue(tmp_path / "config")
    item = queue.add(with_values(TrainingConfig(), {"output_dir": str(tmp_path / "out"), "train_data_dir": str(tmp_path),
                                                    "output_name": "alpha"}))
    out = io.StringIO()
    assert run_queue(queue, stream=out, poll_s=0.05) == 1  # a NaN is a failure
    text = out.getvalue()
    assert text.count(f"queue: {item.id} warning: No CUDA GPU: precision.mixed_precision fp16 is off") == 1, text
    assert text.count(f"queue: {item.id} warning: The process that started this run (pid 7) is gone") == 1, text
    end = "It happened at step 3 (epoch 1). No file was saved."
    assert f"queue: {item.id} (alpha) nan: {end}" in text and queue.items()[0].reason == end, text
