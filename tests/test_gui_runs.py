"""Following runs from the GUI: status in words for every way a run ends, progress, samples, Stop, re-attach
after a page reload, the Results tab, and the Utilities tab's captioning and caption editor handlers.

Runs are simulated by writing the run folder exactly as the trainer does (events.EventWriter); the real
trainer is driven by the browser test (tests/browser)."""

from __future__ import annotations

import functools
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.config import TrainingConfig, save_config, with_values
from tests.datasets import make_caption, make_concept, make_image


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from loratrainer.gui.server import neutralise_gradio_env

    temp = neutralise_gradio_env()
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    state = tmp_path_factory.mktemp("state")
    return build_page("en", Jobs(state), Display(temp / "display"))[1]


def write_lora(path: Path, metadata: dict[str, str]) -> Path:
    header = json.dumps({"__metadata__": metadata, "w": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    return path


def fake_run(page, tmp_path: Path, name: str, *, ended: dict | None, pid: int | None = None, samples: int = 1) -> Path:
    out = tmp_path / "model"
    config = with_values(TrainingConfig(), {"folders.output_dir": str(out), "folders.output_name": name})
    run_dir = tmp_path / "log" / f"{name}_20260101-000000"
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / run_files.CONFIG_FILE)
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        w.emit("started", total_steps=8, steps_per_epoch=4, epochs=2, num_processes=1, images=4, samples_per_epoch=4, seed=1, pid=pid or 999999)
        for step in (1, 2, 3):
            w.emit("progress", step=step, total_steps=8, epoch=1, epochs=2, loss=0.5 / step, avg_loss=0.4, lr=1e-4, it_per_s=2.5, eta_s=3.0)
        for i in range(samples):
            sample = make_image(out / "sample" / f"{name}_e000001_{i:02d}.png", (32, 32))
            w.emit("sample", path=str(sample), step=3, epoch=1, index=i, prompt="a house")
        lora = write_lora(out / f"{name}-000001.safetensors", {"ss_epoch": "1", "ss_steps": "4", "ss_network_dim": "8"})
        w.emit("checkpoint", path=str(lora), kind="epoch", epoch=1, step=4)
        if ended:
            w.emit("ended", **ended)
    (run_dir / run_files.LOG_FILE).write_text("line 1\nTraceback: boom\n")
    page.jobs._remember(run_dir)
    return run_dir


@pytest.mark.parametrize(
    "ended,expected",
    [
        ({"status": "finished", "reason": "", "step": 8, "epoch": 2, "exit_code": 0}, "Finished"),
        ({"status": "stopped", "reason": "", "step": 3, "epoch": 1, "exit_code": 10}, "Stopped at step 3"),
        ({"status": "nan", "reason": "loss is nan at step 3, epoch 1, lr 1e-4.", "step": 3, "epoch": 1, "exit_code": 11}, "NaN"),
        ({"status": "oom", "reason": "CUDA out of memory (batch 4, 768x768).", "step": 3, "epoch": 1, "exit_code": 12}, "Lower the batch size"),
        ({"status": "disk_full", "reason": "disk full: /x/a.safetensors", "step": 3, "epoch": 1, "exit_code": 13}, "disk is full"),
        ({"status": "error", "reason": "ValueError: bad", "step": 3, "epoch": 1, "exit_code": 1}, "failed: ValueError: bad"),
        (None, "killed"),
    ],
)
def test_how_a_run_ended_is_said_in_words(page, tmp_path, ended, expected):
    h = page.handlers["training"]
    run_dir = fake_run(page, tmp_path, "lora", ended=ended)
    out = h.refresh(str(run_dir), -1)
    n = page.named
    assert expected in out[n["status"]]
    if ended and ended["reason"]:
        assert ended["reason"] in out[n["status"]]
    assert "Traceback: boom" in out[n["log"]]
    assert out[n["timer"]].active is False
    assert f'data-step="{ended["step"] if ended else 3}"' in out[n["progress"]]
    assert list(out[n["loss_plot"]]["step"]) == [1, 2, 3]


def test_running_run_progress_samples_stop_and_reattach(page, tmp_path):
    h = page.handlers["training"]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = fake_run(page, tmp_path, "live", ended=None, pid=sleeper.pid, samples=2)
        # A reloaded page: the handler finds the alive run by itself and turns the timer on.
        out = h.attach()
        n = page.named
        assert out[n["run_dir"]] == str(run_dir)
        assert out[n["timer"]].active is True
        assert "step 3 of 8" in out[n["status"]]
        html = out[n["progress"]]
        assert "step 3/8" in html and "epoch 1/2" in html and "2.50 it/s" in html and "0:03 left" in html
        gallery = out[n["gallery"]]
        assert len(gallery) == 2 and all(Path(p).is_relative_to(page.display.root) for p, _ in gallery)
        # The next tick with the same samples does not resend the gallery.
        again = h.refresh(str(run_dir), 2)
        assert again[n["gallery"]] == {"__type__": "update"} or again[n["gallery"]].get("__type__") == "update"
        assert out[n["stop_button"]]["interactive"] is True and out[n["stop_button"]]["variant"] == "stop"
        stopped = h.stop(str(run_dir))
        assert (run_dir / run_files.STOP_FILE).exists()
        assert stopped[n["run_message"]] == "" and stopped[n["status"]].startswith("Stopping")
        # every later tick keeps saying so until the trainer has ended (a stop can take many seconds)
        for _ in range(3):
            assert h.refresh(str(run_dir), 2)[n["status"]].startswith("Stopping")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert h.stop(str(run_dir)) == {n["run_message"]: "No run is going."}
    ended = h.refresh(str(run_dir), 2)
    assert not ended[n["status"]].startswith("Stopping") and ended[n["stop_button"]]["interactive"] is False


def test_start_during_a_run_leaves_its_status_alone(page, tmp_path):
    """A second Start while a run goes answers under the buttons; the live status, progress and timer stay."""
    h, n = page.handlers["training"], page.named
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = fake_run(page, tmp_path, "busy", ended=None, pid=sleeper.pid)
        out = h.start(page.show_config(TrainingConfig()))
        assert set(out) == {n["run_message"], n["confirm_panel"]}  # nothing else on the page changes
        assert "still going" in out[n["run_message"]] and str(run_dir) in out[n["run_message"]]
        assert "step 3 of 8" in h.refresh(str(run_dir), -1)[n["status"]]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_results_lists_files_per_epoch_with_metadata(page, tmp_path):
    run_dir = fake_run(page, tmp_path, "house", ended={"status": "finished", "reason": "", "step": 8, "epoch": 2, "exit_code": 0})
    final = write_lora(tmp_path / "model" / "house.safetensors", {"ss_epoch": "2", "ss_steps": "8", "ss_tag_frequency": '{"10_house": {"a": 2}}'})
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        w.emit("checkpoint", path=str(final), kind="final", epoch=2, step=8, epoch_loss=0.125)
    write_lora(tmp_path / "model" / "house-interrupted.safetensors", {})  # on disk, but this run never wrote it
    write_lora(tmp_path / "model" / "other.safetensors", {})
    r = page.handlers["results"]
    out = r.refresh_runs(None)
    n = page.named
    assert out[n["results_run"]]["value"] == str(run_dir)
    rows = out[n["results_files"]]
    assert [row[0] for row in rows] == ["house-000001.safetensors", "house.safetensors"]
    # file, saved at, step, average loss over the epoch, validation loss (none: this run had no validation), time, size
    assert rows[0][1] == "epoch 1" and rows[0][2] == 4 and rows[0][3] == f"{(0.5 + 0.25 + 0.5 / 3) / 3:.4f}" and float(rows[0][6]) >= 0
    assert rows[0][4] == ""
    assert rows[1][1] == "final (epoch 2)" and rows[1][3] == "0.1250"
    assert out[n["results_paths"]].splitlines() == [str(tmp_path / "model" / "house-000001.safetensors"), str(final)]
    assert len(out[n["results_samples"]]) == 1 and "epoch 1" in out[n["results_samples"]][0][1]
    assert "finished" in out[n["results_summary"]] and "learning rate 0.0001" in out[n["results_summary"]]
    # a click on a row: the file's whole metadata (nested JSON unpacked) and its path
    chosen = r.select_file(out[n["results_records"]], _Select(1))
    assert chosen[n["results_file_path"]] == str(final)
    assert chosen[n["results_meta"]]["ss_tag_frequency"] == {"10_house": {"a": 2}} and chosen[n["results_meta"]]["ss_steps"] == "8"


class _Select:
    """What Gradio passes to a Dataframe .select handler (gr.SelectData: index = [row, column])."""

    def __init__(self, row: int):
        self.index = [row, 0]


def test_results_of_runs_with_a_common_prefix_and_of_a_failed_run(page, tmp_path):
    """"concrete-house" does not list "concrete-house-long"'s files; a failed run that saved nothing lists nothing."""
    ok = {"status": "finished", "reason": "", "step": 8, "epoch": 2, "exit_code": 0}
    short = fake_run(page, tmp_path / "a", "concrete-house", ended=ok)
    long = fake_run(page, tmp_path / "a", "concrete-house-long", ended=ok)
    failed = tmp_path / "a" / "log" / "concrete-house_20260101-000001"
    failed.mkdir()
    save_config(with_values(TrainingConfig(), {"folders.output_dir": str(tmp_path / "a" / "model"), "folders.output_name": "concrete-house"}),
                failed / run_files.CONFIG_FILE)
    with events.EventWriter(failed / run_files.EVENTS_FILE) as w:
        w.emit("ended", status="error", reason="boom", step=0, epoch=0, exit_code=1)
    r, n = page.handlers["results"], page.named
    assert [row[0] for row in r.show_run(str(short))[n["results_files"]]] == ["concrete-house-000001.safetensors"]
    assert [row[0] for row in r.show_run(str(long))[n["results_files"]]] == ["concrete-house-long-000001.safetensors"]
    out = r.show_run(str(failed))
    assert out[n["results_files"]] == [] and out[n["results_paths"]] == "" and "0 LoRA file" in out[n["results_summary"]]
    # Refresh selects the newest run
    page.jobs._remember(failed)
    assert r.refresh_runs(str(short))[n["results_run"]]["value"] == str(failed)


def test_sample_grid_from_the_results_tab(page, tmp_path):
    run_dir = fake_run(page, tmp_path, "grid", ended={"status": "finished", "reason": "", "step": 8, "epoch": 2, "exit_code": 0}, samples=2)
    r, n = page.handlers["results"], page.named
    out = r.make_sample_grid(str(run_dir))
    assert (run_dir / "sample-grid.png").is_file() and "sample-grid.png" in out[n["sample_grid_message"]]
    assert Path(out[n["sample_grid"]]).is_relative_to(page.display.root)
    assert r.make_sample_grid(None)[n["sample_grid_message"]] == "Choose a run first."


def _caption_form(page, **values) -> dict:
    defaults = {"cap_method": "fixed", "cap_folder": "", "cap_extension": ".txt", "cap_prefix": "", "cap_postfix": "", "cap_batch": 1,
                "cap_overwrite": False, "cap_recursive": False, "blip_model": "", "blip_beam_search": True, "blip_num_beams": 1,
                "blip_top_p": 0.9, "blip_min_length": 5, "blip_max_length": 75, "git_model": "", "git_max_length": 50, "wd14_model": "",
                "wd14_general_threshold": 0.35, "wd14_character_threshold": 0.85, "wd14_undesired_tags": "", "fixed_text": "a house"}
    defaults.update(values)
    return {page.named[k]: v for k, v in defaults.items()}


def test_captioning_keeps_existing_captions(page, tmp_path):
    u = page.handlers["utilities"]
    folder = make_concept(tmp_path, "10_house", 3, captions=False)
    make_caption(folder / "img_000.png", "hand written")
    plan = u.plan(_caption_form(page, cap_folder=str(folder)))
    assert "2 image(s) will be captioned; 1 already have a caption" in plan
    messages = list(u.caption(_caption_form(page, cap_folder=str(folder), cap_prefix="mystyle")))
    assert "2 caption(s) written, 1 kept" in messages[-1]
    assert (folder / "img_000.txt").read_text() == "hand written"
    assert (folder / "img_001.txt").read_text().strip() == "mystyle a house"
    assert u.cancel() == "No captioning is running."


def test_caption_editor(page, tmp_path):
    u = page.handlers["utilities"]
    folder = make_concept(tmp_path, "10_house", 3, captions="house, red roof")
    n = page.named
    out = u.editor_page(str(folder), "", 1, ".txt")
    assert len(out[n["ed_items"]]) == 3 and len(out[n["ed_gallery"]]) == 3 and "Page 1 of 1" in out[n["ed_message"]]
    chosen = u.editor_select(out[n["ed_items"]], 1)
    assert chosen[n["ed_caption"]] == "house, red roof"
    assert "Saved" in u.editor_save(str(folder), chosen[n["ed_image"]], "house, blue roof", ".txt")[0]
    assert (folder / "img_001.txt").read_text().strip() == "house, blue roof"
    assert "2 caption(s) changed" in u.editor_replace(str(folder), "red roof", "flat roof", ".txt")
    assert u.editor_tags(str(folder), ".txt")[0] == ["house", 3]
    assert u.editor_save(str(folder), "/etc/passwd", "x", ".txt")[0].startswith("**Error:**")


def test_caption_editor_saves_as_you_go(page, tmp_path):
    """Leaving the caption box saves a changed caption (no Save click); an unchanged one writes nothing."""
    u = page.handlers["utilities"]
    folder = make_concept(tmp_path, "10_house", 2, captions="house")
    items = u.editor_page(str(folder), "", 1, ".txt")[page.named["ed_items"]]
    image = items[0][0]
    before = (folder / "img_000.txt").stat().st_mtime_ns
    autosave = functools.partial(u.editor_save, only_if_changed=True)
    assert autosave(str(folder), image, "house", ".txt", items)[0] is None
    assert (folder / "img_000.txt").stat().st_mtime_ns == before
    message, items, _ = autosave(str(folder), image, "house, at night", ".txt", items)
    assert "Saved" in message and (folder / "img_000.txt").read_text().strip() == "house, at night"
    assert dict(items)[image] == "house, at night"  # the next blur without changes saves nothing
    assert autosave(str(folder), image, "house, at night", ".txt", items)[0] is None
    assert autosave(str(folder), "/etc/passwd", "x", ".txt", items)[0] is None  # only listed images


def test_caption_editor_gallery_shows_the_saved_caption(page, tmp_path):
    """Save (button or leaving the box) refreshes the items and the gallery: the text under the thumbnail is the
    saved caption at once, not the old one until the page is loaded again."""
    u = page.handlers["utilities"]
    n = page.named
    folder = make_concept(tmp_path, "10_house", 3, captions="house, red roof")
    out = u.editor_page(str(folder), "", 1, ".txt")
    items = out[n["ed_items"]]
    assert [c for _, c in out[n["ed_gallery"]]] == ["house, red roof"] * 3
    image = items[1][0]
    message, items, gallery = u.editor_save(str(folder), image, "  house, blue roof\r\n", ".txt", items)
    assert "Saved" in message and dict(items)[image] == "house, blue roof"
    assert [c for _, c in gallery] == ["house, red roof", "house, blue roof", "house, red roof"]
    assert [c for _, c in gallery] == [c for _, c in u.editor_page(str(folder), "", 1, ".txt")[n["ed_gallery"]]]
    # a refused save changes neither
    message, same, gallery = u.editor_save(str(folder), "/etc/passwd", "x", ".txt", items)
    assert message.startswith("**Error:**") and same == items and [c for _, c in gallery][1] == "house, blue roof"
    # saved as you go: the new items give the gallery
    message, items, gallery = u.editor_save(str(folder), items[0][0], "house, at night", ".txt", items, only_if_changed=True)
    assert [c for _, c in gallery][0] == "house, at night" and gallery == u.editor_gallery(items)


def test_loss_chart_stays_small_on_long_runs(page, tmp_path):
    from loratrainer.gui import run_view as progress
    from loratrainer.gui.jobs import JobView

    state = events.RunState(loss_history=[(i, 1.0 / i) for i in range(1, 20001)])
    frame = progress.loss_frame(JobView(tmp_path, state, True, "running", ""))
    assert len(frame) <= progress.MAX_CHART_POINTS + 1
    assert frame["step"].iloc[0] == 1 and frame["step"].iloc[-1] == 20000


def test_reload_after_a_finished_run_shows_its_settings(page, tmp_path):
    """No job running: a reloaded page shows the newest run's settings (its config.json), not the defaults."""
    ended = {"status": "finished", "reason": "", "step": 8, "epoch": 2, "exit_code": 0}
    run_dir = fake_run(page, tmp_path, "finished_one", ended=ended)
    out = page.handlers["training"].attach()
    values = page.paths_of(out)
    assert out[page.named["run_dir"]] == str(run_dir)
    assert values["folders.output_name"] == "finished_one"
    assert values["folders.output_dir"] == str(tmp_path / "model")
    assert out[page.named["timer"]].active is False


def test_log_tail_is_our_log_not_library_noise(tmp_path):
    """console.log repeats train.log and adds library progress bars; the tail shows train.log, plus a traceback
    that only reached the console; with no train.log at all the console is shown without progress bars."""
    from loratrainer.gui.jobs import log_tail

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / run_files.LOG_FILE).write_text("2026-01-01 00:00:00,000 INFO loading the model\n2026-01-01 00:00:01,000 INFO epoch 1\n")
    (run_dir / "console.log").write_text(
        "2026-01-01 00:00:00,000 INFO loading the model\n"
        "Loading weights:   0%|          | 0/196 [00:00<?, ?it/s]\rLoading weights: 100%|##########| 196/196 [00:01<00:00, 150it/s]\n"
        "Loading weights: 100%|##########| 196/196 [00:01<00:00, 150it/s]\n"
        " 50%|#####     | 1/2 [00:00<00:00,  2.00it/s]\n"
        "Traceback (most recent call last):\n"
        '  File "worker.py", line 3, in <module>\n'
        "    boom()\n"
        "RuntimeError: a worker died\n"
        "Traceback (most recent call last):\n"
        '  File "accelerate/commands/launch.py", line 999, in simple_launcher\n'
        "subprocess.CalledProcessError: Command '['python', '-m', 'loratrainer.train.entry']' returned non-zero exit status 10.\n"
    )
    tail = log_tail(run_dir)
    assert "CalledProcessError" not in tail and "simple_launcher" not in tail  # accelerate on a stopped run
    assert "Loading weights" not in tail and "it/s" not in tail
    assert tail.count("loading the model") == 1 and "epoch 1" in tail
    assert "Traceback (most recent call last):" in tail and tail.rstrip().endswith("RuntimeError: a worker died")
    # a traceback the trainer logged itself is not repeated
    (run_dir / run_files.LOG_FILE).write_text("2026-01-01 00:00:00,000 ERROR Traceback (most recent call last):\n  x\nRuntimeError: a worker died\n")
    assert log_tail(run_dir).count("RuntimeError: a worker died") == 1
    # the trainer never got to write train.log: the console, minus the progress bars
    (run_dir / run_files.LOG_FILE).unlink()
    tail = log_tail(run_dir)
    assert "Loading weights" not in tail and "RuntimeError: a worker died" in tail and "loading the model" in tail


def test_log_box_shows_the_whole_tail(page):
    """The newest log line must be visible without scrolling (a 10-line box showed the oldest lines first)."""
    from loratrainer.gui.jobs import LOG_TAIL_LINES

    assert page.named["log"].max_lines >= LOG_TAIL_LINES


def test_tensorboard_and_output_folder_buttons(page, tmp_path, monkeypatch):
    import urllib.request

    run_dir = fake_run(page, tmp_path, "tb", ended={"status": "finished", "reason": "", "step": 8, "epoch": 2, "exit_code": 0})
    r = page.handlers["results"]
    assert "no TensorBoard logs" in r.tensorboard(str(run_dir))
    (run_dir / run_files.TENSORBOARD_DIR).mkdir()
    try:
        message = r.tensorboard(str(run_dir))
        url = message.split("](")[1].split(")")[0]
        assert url.startswith("http://127.0.0.1:")  # loopback only
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200
        assert r.tensorboard(str(run_dir)) == message  # the same one again, not a second server
    finally:
        r.tensorboards.close()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert str(tmp_path / "model") in r.open_output(str(run_dir)) and "No file manager" in r.open_output(str(run_dir))
    assert r.open_output(None) == "Choose a run first."


def test_an_idle_page_does_not_spin(page):
    """Gradio's queue would look for work every 1 ms (measured: 3.8 % of a core for an idle GUI with no browser);
    the page's queue waits 50 ms between looks, and the run timer is off while nothing runs."""
    from loratrainer.gui.app import build_page
    from loratrainer.gui.gradio_adapter import IDLE_POLL_S

    blocks, ui = build_page("en", page.jobs, page.display)
    assert blocks._queue.sleep_when_free >= IDLE_POLL_S >= 0.05
    assert ui.handlers["training"].refresh(None, -1)[ui.named["timer"]].active is False


def test_trainer_notes_are_shown_in_the_page_with_labels_in_its_language(page, tmp_path):
    """The precision the trainer used, the config's notes and the trainer's warnings arrive as `note` events, written
    by the trainer's own reporting code (train/reporting.py): the page says the coded ones in its language naming
    settings by their labels, and reads neither config.json nor train.log for them."""
    import logging

    from loratrainer.gui.i18n import Translator
    from loratrainer.gui.jobs import Jobs
    from loratrainer.gui.run_view import run_notes
    from loratrainer.messages import Msg
    from loratrainer.run.notes import precision_off
    from loratrainer.train.reporting import report_config_notes, report_warnings

    run_dir = tmp_path / "log" / "notes_20260101-000000"
    run_dir.mkdir(parents=True)
    config = with_values(TrainingConfig(), {"folders.output_dir": str(tmp_path / "model"), "training.max_train_steps": 8,
                                            "optimizer.optimizer": "Prodigy", "optimizer.learning_rate": 1e-4,
                                            "optimizer.unet_lr": None, "optimizer.text_encoder_lr": None})
    log = logging.getLogger("loratrainer.train")
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        handler = report_warnings(w)  # as train/entry.py does once the event stream is open
        try:
            report_config_notes(w, config.summary_messages())
            log.warning("%s", precision_off("fp16", "cpu"))
            w.emit("started", total_steps=8, steps_per_epoch=4, epochs=2, num_processes=1, images=4, seed=1, pid=999999, mixed_precision="no")
            for _ in range(2):  # a warning for each cached image is one note
                log.warning("%s", Msg.of("train.cache_not_ours", path="/x/cache.npz", what=Msg.of("train.cache.latents")))
            log.warning("a library said %s", "something")  # no code: the trainer's English line
            log.info("not a note")
        finally:
            logging.getLogger("loratrainer").removeHandler(handler)
    view = Jobs(tmp_path / "state").view(run_dir)  # the page's one reader of the run
    en = run_notes(view, Translator("en"))
    assert "No CUDA GPU: Mixed precision fp16 is off" in en
    assert "Max train steps = 8 overrides the epoch count (Epochs)" in en
    assert "Learning rate is 0.0001: Prodigy adapts the step size itself and expects about 1.0." in en
    assert en.count("cache.npz was not written by loratrainer") == 1 and en.count("fp16 is off") == 1
    assert "a library said something" in en.split("Warnings in train.log")[1] and "not a note" not in en
    assert "max_train_steps" not in en and "optimizer.learning_rate" not in en
    ko = run_notes(view, Translator("ko"))
    t = Translator("ko")
    for label in ("precision.mixed_precision", "training.max_train_steps", "training.epoch", "optimizer.learning_rate"):
        assert t.label(label) in ko, label
    assert "CUDA GPU가 없어" in ko and "에포크 수" in ko and "스텝 크기를 스스로" in ko and "loratrainer가 쓴 파일이 아니라" in ko
    korean_part = ko.split(t("run.notes_log"))[0]
    assert "fp16 is off" not in ko and "overrides" not in ko and "was not written" not in ko and "library" not in korean_part
    # the page's refresh shows them: this run folder has no config.json and no train.log (the page reads neither)
    page.jobs._remember(run_dir)
    assert "No CUDA GPU" in page.handlers["training"].refresh(str(run_dir), -1)[page.named["run_notes"]]


def test_a_run_of_an_older_trainer_still_shows_its_status_without_notes(page, tmp_path):
    """An events.jsonl written before notes and coded reasons (no `note` events, an English `reason`): the page
    still says how it ended and shows its log; it shows no notes (the old train.log warnings are not scraped)."""
    run_dir = tmp_path / "log" / "old_20250101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / run_files.EVENTS_FILE).write_text(
        '{"event": "started", "time": "2025-01-01T00:00:00.000+00:00", "total_steps": 4, "steps_per_epoch": 2, "epochs": 2, "seed": 1, "pid": 999999, "mixed_precision": "no"}\n'
        '{"event": "progress", "time": "2025-01-01T00:00:01.000+00:00", "step": 2, "total_steps": 4, "epoch": 1, "epochs": 2, "loss": 0.3}\n'
        '{"event": "checkpoint", "time": "2025-01-01T00:00:02.000+00:00", "path": "/o/old-interrupted.safetensors", "kind": "interrupted", "epoch": 1, "step": 2}\n'
        '{"event": "ended", "time": "2025-01-01T00:00:03.000+00:00", "status": "stopped", "reason": "", "step": 2, "epoch": 1, "exit_code": 10}\n')
    (run_dir / run_files.LOG_FILE).write_text("2025-01-01 00:00:00,000 WARNING no CUDA GPU: mixed precision fp16 is off, training in fp32\n")
    page.jobs._remember(run_dir)
    out = page.handlers["training"].refresh(str(run_dir), -1)
    n = page.named
    assert out[n["status"]].startswith("Stopped at step 2") and "old-interrupted.safetensors" in out[n["status"]]
    assert out[n["run_notes"]] == "" and "fp16 is off" in out[n["log"]]


def test_caption_editor_selects_by_file_past_an_unreadable_image(page, tmp_path):
    """Issue 22: an unreadable image keeps its place in the gallery (a grey tile naming it and why), and the
    selection follows the clicked entry's file, so Save writes the clicked image's caption file and no other."""
    from loratrainer.gui.tab_utilities import _gallery_file

    u, n = page.handlers["utilities"], page.named
    folder = make_concept(tmp_path, "10_house", 3, captions="house")
    (folder / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    out = u.editor_page(str(folder), "", 1, ".txt")
    items, gallery = out[n["ed_items"]], out[n["ed_gallery"]]
    assert len(gallery) == len(items) == 3
    assert "img_001.png: cannot be shown" in gallery[1][1] and "not a readable image" in gallery[1][1]
    # Gradio's select event gives the entry's file (copied into its cache under the same name)
    value = {"image": {"path": f"/tmp/gradio/abc/{Path(gallery[2][0]).name}"}, "caption": gallery[2][1]}
    chosen = u.editor_select(items, 0, value)  # a stale index loses against the file
    assert chosen[n["ed_image"]].endswith("img_002.png") and chosen[n["ed_note"]] == ""
    broken = u.editor_select(items, None, {"image": {"path": gallery[1][0]}})
    assert broken[n["ed_image"]].endswith("img_001.png") and "cannot be shown" in broken[n["ed_note"]]
    assert _gallery_file({"image": {"url": "http://h/gradio_api/file=/x/y/abc.jpg"}}) == "abc.jpg"
    before = {p.name: p.read_text() for p in folder.glob("*.txt")}
    u.editor_save(str(folder), chosen[n["ed_image"]], "mountain landscape, cyan sky", ".txt", items)
    after = {p.name: p.read_text() for p in folder.glob("*.txt")}
    assert after.pop("img_002.txt").strip() == "mountain landscape, cyan sky"
    before.pop("img_002.txt")
    assert after == before


def test_captioning_adds_the_prefix_to_existing_captions_when_asked(page, tmp_path):
    """Issue 22: as the Kohya GUI's add_pre_postfix (kohya_gui/common_gui.py) does, the trigger word goes onto
    captions that already exist too, when the option is ticked; never twice, and the old files are backed up.
    The preview shows an example caption."""
    u = page.handlers["utilities"]
    folder = make_concept(tmp_path, "10_house", 3, captions=False)
    make_caption(folder / "img_000.png", "hand written")
    form = _caption_form(page, cap_folder=str(folder), cap_prefix="mystyle", cap_add_existing=True)
    plan = u.plan(form)
    assert "Example: img_001.png: mystyle a house" in plan and "get the prefix/postfix added" in plan, plan
    messages = list(u.caption(form))
    assert "2 caption(s) written, 1 kept" in messages[-1] and "added to 1 existing caption(s)" in messages[-1], messages[-1]
    assert (folder / "img_000.txt").read_text().strip() == "mystyle hand written"
    assert (folder / "img_001.txt").read_text().strip() == "mystyle a house"
    backups = list(folder.glob(".caption-backups/*/img_000.txt"))
    assert len(backups) == 1 and backups[0].read_text().strip() == "hand written"  # the user's own caption kept
    messages = list(u.caption(form))  # again: nothing is added twice
    assert (folder / "img_000.txt").read_text().strip() == "mystyle hand written"
    assert "added to 0 existing caption(s); 3 already had it" in messages[-1], messages[-1]
    # without the option the caption is kept as it was
    make_caption(folder / "img_002.png", "my own words")
    list(u.caption(_caption_form(page, cap_folder=str(folder), cap_prefix="other")))
    assert (folder / "img_002.txt").read_text().strip() == "my own words"


def test_caption_preview_shows_an_existing_caption_as_add_to_existing_will_write_it(page, tmp_path):
    """Issue 22 item 11: with images both to caption and already captioned, the preview shows one example of each:
    the new caption, and an existing caption with the trigger word added (as Kohya's add_pre_postfix writes it,
    kohya_gui/common_gui.py); without the option, or with no prefix/postfix, no existing caption is shown changed."""
    u = page.handlers["utilities"]
    folder = make_concept(tmp_path, "10_house", 3, captions=False)
    make_caption(folder / "img_000.png", "hand written\nsecond line")
    before = (folder / "img_000.txt").read_text()
    plan = u.plan(_caption_form(page, cap_folder=str(folder), cap_prefix="mystyle", cap_postfix="v2", cap_add_existing=True))
    assert "Example: img_001.png: mystyle a house v2" in plan, plan
    assert "Example for an image that already has a caption: img_000.txt: mystyle hand written v2" in plan, plan
    assert (folder / "img_000.txt").read_text() == before  # a preview writes nothing
    for off in (_caption_form(page, cap_folder=str(folder), cap_prefix="mystyle"),
                _caption_form(page, cap_folder=str(folder), cap_add_existing=True)):
        assert "already has a caption:" not in u.plan(off)
    # every image has a caption: only the existing example, once
    make_caption(folder / "img_001.png", "a")
    make_caption(folder / "img_002.png", "b")
    plan = u.plan(_caption_form(page, cap_folder=str(folder), cap_prefix="mystyle", cap_add_existing=True))
    assert plan.count("img_000.txt: mystyle hand written") == 1 and "Example: img_0" not in plan, plan


def test_offline_model_error_is_one_sentence_naming_the_box(page):
    from loratrainer.errors import UserError
    from loratrainer.messages import Msg

    u = page.handlers["utilities"]
    import loratrainer.caption.hub  # noqa: F401  (defines the message)

    exc = UserError(Msg.of("hub.offline", model="Salesforce/blip-image-captioning-large", why=Msg.of("hub.why_unreachable")))
    text = u.caption_error(exc)
    assert text.startswith("**Error:** The model") and text.endswith("put a local model folder in Model."), text
    sentence = text.removeprefix("**Error:** ")
    assert "--model" not in sentence and sentence.count(". ") == 0 and sentence.count(":") == 1, text


def test_weight_grid_size_starts_at_the_runs_resolution(page, tmp_path):
    """An SDXL run trained at 1024x768: the weight grid renders there unless the user changes it (not at SD1.5's 512)."""
    run = tmp_path / "model" / "log" / "xl_20260101-000000"
    run.mkdir(parents=True)
    save_config(with_values(TrainingConfig(), {"folders.output_dir": str(tmp_path / "model"), "folders.output_name": "xl",
                                               "buckets.max_resolution": "1024,768"}), run / run_files.CONFIG_FILE)
    with events.EventWriter(run / run_files.EVENTS_FILE) as w:
        w.emit("ended", status="finished", reason="", step=0, epoch=0, exit_code=0)
    r, n = page.handlers["results"], page.named
    out = r.show_run(str(run))
    assert (out[n["grid_width"]], out[n["grid_height"]]) == (1024, 768)
