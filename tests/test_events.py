"""The event stream the GUI reads: incremental reading, partial lines, folding into a RunState."""

from __future__ import annotations

import json

from loratrainer.run import events


def test_read_events_is_incremental_and_leaves_a_partial_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    with events.EventWriter(path) as w:
        w.emit("started", total_steps=4, epochs=2, seed=1)
        w.emit("progress", step=1, total_steps=4, epoch=1, epochs=2, loss=0.5, avg_loss=0.5, lr=1e-4)
    first, offset = events.read_events(path)
    assert [e["event"] for e in first] == ["started", "progress"] and all("time" in e for e in first)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"event": "checkpoint", "path": "/x/a.safetensors", "kind": "ep')  # the writer is mid-line
    more, offset2 = events.read_events(path, offset)
    assert more == [] and offset2 == offset
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('och", "epoch": 1, "step": 2}\nnot json\n')
    more, offset3 = events.read_events(path, offset2)
    assert [e["kind"] for e in more] == ["epoch"] and offset3 == path.stat().st_size


def test_missing_file_yields_nothing():
    assert events.read_events("/nonexistent/events.jsonl", 7) == ([], 7)


def test_summarize_folds_a_run_and_continues_incrementally(tmp_path):
    evs = [
        {"event": "started", "total_steps": 4, "epochs": 2, "seed": 9},
        {"event": "progress", "step": 1, "total_steps": 4, "epoch": 1, "epochs": 2, "loss": 0.4, "avg_loss": 0.4, "lr": 1e-4, "it_per_s": 2.0, "eta_s": 1.5},
        {"event": "checkpoint", "path": "/o/a-000001.safetensors", "kind": "epoch", "epoch": 1, "step": 2},
    ]
    state = events.summarize(evs)
    assert (state.status, state.step, state.total_steps, state.seed, state.eta_s) == ("running", 1, 4, 9, 1.5)
    assert state.fraction == 0.25 and not state.done
    state = events.summarize([{"event": "progress", "step": 4, "epoch": 2, "loss": 0.2},
                              {"event": "ended", "status": "stopped", "reason": "", "step": 4, "epoch": 2, "exit_code": 10}], state)
    assert state.done and state.status == "stopped" and state.exit_code == 10
    assert state.loss_history == [(1, 0.4), (4, 0.2)] and state.last_files == ["/o/a-000001.safetensors"]


def test_exit_codes_and_their_descriptions():
    assert events.EXIT_CODES == {"finished": 0, "stopped": 10, "nan": 11, "oom": 12, "disk_full": 13, "error": 1}
    assert events.describe_exit(11) == "nan" and events.describe_exit(-9) == "killed (signal 9)"
    assert events.describe_exit(3) == "error (exit code 3)"


def test_writer_refuses_unknown_kinds_and_writes_one_line_each(tmp_path):
    w = events.EventWriter(tmp_path / "e.jsonl")
    w.emit("sample", path="/o/sample/x.png", step=1, epoch=1, index=0, prompt="a ü")
    try:
        w.emit("bogus")
        raise AssertionError("expected ValueError")
    except ValueError:
        pass
    w.close()
    lines = (tmp_path / "e.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["prompt"] == "a ü"


def test_headline_says_how_a_run_ended_in_a_few_words():
    def ended(status: str, step: int = 37) -> events.RunState:
        return events.summarize([{"event": "ended", "status": status, "reason": "long text", "step": step, "epoch": 2}])

    assert [events.headline(ended(s)) for s in ("finished", "stopped", "nan", "oom", "disk_full", "error")] == [
        "finished", "stopped", "NaN at step 37", "out of memory", "disk full", "error"]
    assert events.headline(events.RunState(status="running"), 137) == "killed (signal 9)"
    assert events.headline(events.RunState(status="running"), -9) == "killed (signal 9)"
    assert events.headline(events.RunState(status="running")) == "running"
