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


def test_one_reader_follows_a_run_folder_and_keeps_what_the_page_and_results_show(tmp_path):
    """RunReader reads what was appended since its last read (a partial line waits) into one RunState, which keeps
    the events the page, Results and the queue show: checkpoints, samples, saved states, notes (a repeated warning
    once) and the ended event with its coded reason, a setting inside it named by its label on a page."""
    from loratrainer.messages import Label, Msg
    from loratrainer.run import files as run_files
    from loratrainer.run.notes import note_event
    from loratrainer.run.outcomes import from_event, to_event

    reader = events.RunReader(tmp_path)
    assert reader.read().status == "starting" and reader.new == []  # no events.jsonl yet
    cache = Msg.of("train.cache_not_ours", path="/x/a.npz", what=Msg.of("train.cache.latents"))
    with events.EventWriter(tmp_path / run_files.EVENTS_FILE) as w:
        w.emit("started", total_steps=4, steps_per_epoch=2, epochs=2, seed=1, pid=4321, output_name="house")
        w.emit("note", **note_event(cache, str(cache)))
        w.emit("note", **note_event(cache, str(cache)))
        w.emit("note", **note_event(None, "a library's line"))
    state = reader.read()
    assert (state.status, state.pid, state.steps_per_epoch, state.started["output_name"]) == ("running", 4321, 2, "house")
    assert [n.get("text") for n in state.notes] == [str(cache), "a library's line"]
    assert from_event(state.notes[0]["msg"]) == cache
    with open(tmp_path / run_files.EVENTS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"event": "checkpoint", "path": "/o/house-interrupted.safetensors", "kind": "interrupted", "step": 3}) + "\n")
        fh.write(json.dumps({"event": "state_saved", "path": "/o/house-interrupted-state", "step": 3}) + "\n")
        fh.write('{"event": "ended", "status": "stop')  # the writer is mid-line
    assert reader.read() is state and reader.new[-1]["event"] == "state_saved" and state.ended is None
    msg = Msg.of("train.no_sample_prompts", prompts=Label("sampling.sample_prompts"))  # not an ended code: any message will do
    with open(tmp_path / run_files.EVENTS_FILE, "a", encoding="utf-8") as fh:
        fh.write('ped", "reason": "", "step": 3, "epoch": 2, "exit_code": 10, "msg": ' + json.dumps(to_event(msg)) + "}\n")
    state = reader.read()
    assert state.done and state.exit_code == 10 and state.last_files == ["/o/house-interrupted.safetensors"]
    assert [e["path"] for e in state.saved_states] == ["/o/house-interrupted-state"]
    assert to_event(msg)["params"]["prompts"] == {"label": "sampling.sample_prompts"}
    said = from_event(state.msg)
    assert said == msg and "but sampling.sample_prompts holds no prompt" in str(said)
    assert events.read_run_state(tmp_path).ended == state.ended  # a whole run read once: the same
