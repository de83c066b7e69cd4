"""Issue 13: the Queue tab and "Add to queue" next to Start, called the way Gradio calls them; "Run queue" starts
a runner in a session of its own that goes on without the page."""

from __future__ import annotations

import os
import time

import pytest

from loratrainer.config import TrainingConfig, with_values
from loratrainer.launch.run_queue import RunQueue
from tests.test_gui_handlers import form, page  # noqa: F401  (the page fixture)


@pytest.fixture
def queue_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATRAINER_CONFIG_DIR", str(tmp_path / "config"))
    return RunQueue(tmp_path / "config")


def test_add_to_queue_sits_next_to_start_and_queues_the_page_config(page, queue_home, tmp_path):
    assert page.named["add_to_queue"].elem_id == "run-add-to-queue"
    config = with_values(TrainingConfig(), {"output_name": "first", "network_dim": 12, "output_dir": str(tmp_path / "out")})
    out = page.handlers["queue"].add(form(page, config))
    assert "Added first to the queue at position 1" in out[page.named["run_message"]]
    out = page.handlers["queue"].add(form(page, with_values(config, {"output_name": "second"})))
    assert "position 2" in out[page.named["run_message"]]
    items = queue_home.items()
    assert [i.name for i in items] == ["first", "second"] and items[0].config["network"]["network_dim"] == 12


def test_a_bad_form_value_is_not_queued(page, queue_home):
    data = form(page)
    data[page.fields["network.network_dim"]] = -3
    out = page.handlers["queue"].add(data)
    assert "Error" in out[page.named["run_message"]] and "Traceback" not in out[page.named["run_message"]]
    assert queue_home.items() == []


def test_queue_panel_orders_moves_removes_and_clears(page, queue_home):
    h, n = page.handlers["queue"], page.named
    ids = [queue_home.add(with_values(TrainingConfig(), {"output_name": name})).id for name in ("a", "b", "c")]
    out = h.refresh()
    assert [row[2] for row in out[n["queue_table"]]] == ["a", "b", "c"] and [row[3] for row in out[n["queue_table"]]] == ["pending"] * 3
    assert "not running (3 pending)" in out[n["queue_message"]]
    out = h.up(ids[2])
    assert [row[2] for row in out[n["queue_table"]]] == ["a", "c", "b"] and [row[0] for row in out[n["queue_table"]]] == [1, 2, 3]
    out = h.down(ids[0])
    assert [row[2] for row in out[n["queue_table"]]] == ["c", "a", "b"]
    out = h.remove(ids[0])
    assert [row[2] for row in out[n["queue_table"]]] == ["c", "b"] and "Removed a" in out[n["queue_message"]]
    out = h.remove("gone")
    assert "No queued run with id gone" in out[n["queue_message"]]  # a sentence (issue 11)
    assert "Choose a queued run first" in h.up(None)[n["queue_message"]]
    out = h.clear()
    assert out[n["queue_table"]] == [] and "Removed 2 run(s)" in out[n["queue_message"]]


def test_a_damaged_queue_file_set_aside_is_said_on_the_queue_tab_in_both_languages(page, queue_home):
    """Issue 26: a queue file of a shape this program never writes is set aside (launch/run_queue.py); the CLI warns,
    and the Queue tab says it in one sentence naming both files, also when another tab's read set it aside, and
    keeps saying it across the timer's refreshes until the user next acts on the queue."""
    from loratrainer.gui.i18n import Translator

    h, n = page.handlers["queue"], page.named
    queue_home.path.parent.mkdir(parents=True, exist_ok=True)
    queue_home.path.write_text('{"runs": 5}')
    out = h.refresh()
    kept = next(queue_home.path.parent.glob("queue.json.damaged-*"))
    said = out[n["queue_message"]]
    assert f"⚠ The queue file {queue_home.path} was damaged (not a queue this program wrote) and has been kept as {kept}" in said, said
    assert said.split("\n\n")[0].count(". ") == 0 and "not running (0 pending)" in said and "Traceback" not in said
    assert kept.read_text() == '{"runs": 5}'  # the user's file is kept as it was
    assert "was damaged" in h.refresh()[n["queue_message"]]  # the next tick still says it
    h.clear()  # the user acts on the queue: that answer is the last to carry it
    assert "was damaged" not in h.refresh()[n["queue_message"]]  # said, and the user went on
    # the Results tab read it first (its run list includes the queue's runs): the Queue tab still says it
    queue_home.path.write_text("42")
    page.jobs.all_runs()
    assert "was damaged (not a queue this program wrote)" in h.refresh()[n["queue_message"]]
    page.jobs.queue_notices.clear()
    # in Korean, as one sentence
    from loratrainer.launch.run_queue import RunQueue  # noqa: F401  (defines the message)
    from loratrainer.messages import Msg

    ko = Translator("ko").message(Msg.of("queue.set_aside", path="/q/queue.json", detail="x", kept="/q/k"))
    assert "대기열 파일 /q/queue.json" in ko and "/q/k" in ko and ". " not in ko, ko


@pytest.mark.skipif(os.name != "posix", reason="sessions")
def test_run_queue_starts_a_runner_that_outlives_the_page(page, queue_home, tmp_path):
    # an item that fails at once (no dataset): the detached runner records it and ends; no training needed
    h, n = page.handlers["queue"], page.named
    queue_home.add(with_values(TrainingConfig(), {"train_data_dir": str(tmp_path / "missing"), "output_dir": str(tmp_path / "out")}))
    from loratrainer.launch.queue_runner import runner_running

    out = h.run()
    assert "running in the background" in out[n["queue_message"]]
    # Wait for the runner to end, not only for the item's record: it records the item first and writes its log lines
    # after, so under load the record was seen before "queue: done" was written. The runner holds queue.json.runner
    # for its life (released after its last line); the item is pending until the runner, a new Python process that
    # may take long to start on a loaded machine, claims it. A generous deadline: the loop ends as soon as both hold.
    deadline = time.monotonic() + 300
    while (queue_home.items()[0].status in ("pending", "running") or runner_running(queue_home)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not runner_running(queue_home), "the queue runner did not end within 300 s"
    item = queue_home.items()[0]
    assert item.status == "failed" and "dataset check failed" in item.reason
    log = (queue_home.folder / "queue-runner.log").read_text()
    assert "queue: done (1 failed)" in log
    assert [row[3] for row in h.refresh()[n["queue_table"]]] == ["failed"]
