"""A damaged queue file (docs/reliability.md "Queue and killed processes"): null, 42, "x", {"runs": 5}, a FIFO,
a folder. Each is set aside as queue.json.damaged-<stamp>, said in one warning, and the queue
works on from empty (AttributeError tracebacks, a hang on the FIFO, a silent overwrite were the old ways)."""

from __future__ import annotations

import os

import pytest

from loratrainer.cli import main
from loratrainer.config import TrainingConfig, save_config, with_values
from loratrainer.launch.run_queue import RunQueue
from tests.hang_guard import deadline


@pytest.mark.parametrize("content", ["null", "42", '"x"', '{"runs": 5}', '{"items": [5]}', '{"items": [{"id": 1}]}', "fifo", "folder"])
def test_a_damaged_queue_file_is_set_aside_and_said(content, tmp_path, monkeypatch, capsys):
    home = tmp_path / "config"
    home.mkdir()
    monkeypatch.setenv("LORATRAINER_CONFIG_DIR", str(home))
    queue_file = home / "queue.json"
    if content == "fifo":
        os.mkfifo(queue_file)
    elif content == "folder":
        queue_file.mkdir()
    else:
        queue_file.write_text(content)
    with deadline(30):  # the FIFO hung every queue command
        assert main(["queue", "list"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "the queue is empty" in out
    kept = [p for p in home.iterdir() if p.name.startswith("queue.json.damaged-")]
    assert len(kept) == 1 and err.count("warning: ") == 1
    assert f"warning: the queue file {queue_file} was damaged (" in err and f"has been kept as {kept[0]}" in err
    if content not in ("fifo", "folder"):
        assert kept[0].read_text() == content  # the user's file is kept as it was, never overwritten
    save_config(with_values(TrainingConfig(), {"output_name": "after"}), tmp_path / "a.json")
    assert main(["queue", "add", str(tmp_path / "a.json")]) == 0
    assert [i.name for i in RunQueue(home).items()] == ["after"]
    assert "warning" not in capsys.readouterr().err  # said once


def test_two_damaged_queue_files_set_aside_in_the_same_second_are_both_kept(tmp_path):
    """The set-aside name carries the second; a second damaged file within it gets -2, never replacing the first."""
    home = tmp_path / "config"
    home.mkdir()
    for content in ("null", "42"):
        (home / "queue.json").write_text(content)
        assert RunQueue(home).items() == []
    kept = sorted(p for p in home.iterdir() if p.name.startswith("queue.json.damaged-"))
    assert len(kept) == 2 and sorted(p.read_text() for p in kept) == ["42", "null"]
