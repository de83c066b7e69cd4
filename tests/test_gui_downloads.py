"""Results > downloads, for a browser on another machine (docs/remote.md): the chosen LoRA file under its own name,
and one zip of the run's LoRA files, samples and grids. Only files the run's events name are offered."""

from __future__ import annotations

import zipfile
from pathlib import Path

from loratrainer.run import events
from loratrainer.run import files as run_files
from tests.test_gui_runs import _Select, fake_run, page, write_lora  # noqa: F401  (the page fixture)


FINISHED = {"status": "finished", "reason": "", "step": 8, "epoch": 2, "exit_code": 0}


def test_the_chosen_file_downloads_under_its_own_name_with_its_bytes(page, tmp_path):
    run_dir = fake_run(page, tmp_path, "house", ended=FINISHED)
    r, n = page.handlers["results"], page.named
    out = r.show_run(str(run_dir))
    assert out[n["results_download"]]["interactive"] is False  # nothing chosen yet
    chosen = r.select_file(out[n["results_records"]], _Select(0))
    offered = Path(chosen[n["results_download"]]["value"])
    lora = tmp_path / "model" / "house-000001.safetensors"
    assert offered.name == lora.name and offered.read_bytes() == lora.read_bytes()
    assert chosen[n["results_download"]]["interactive"] is True
    assert page.display.root in offered.parents  # served from the app's display folder, never the output folder


def test_the_run_zip_holds_its_loras_samples_and_grids_and_nothing_else(page, tmp_path):
    run_dir = fake_run(page, tmp_path, "tower", ended=FINISHED, samples=2)
    final = write_lora(tmp_path / "model" / "tower.safetensors", {"ss_epoch": "2"})
    with events.EventWriter(run_dir / run_files.EVENTS_FILE) as w:
        w.emit("checkpoint", path=str(final), kind="final", epoch=2, step=8, epoch_loss=0.1)
    (run_dir / "grids").mkdir()
    (run_dir / "grids" / "weights-20260101-000000.png").write_bytes(b"png")
    write_lora(tmp_path / "model" / "someone-elses.safetensors", {})  # in the output folder, not this run's
    r, n = page.handlers["results"], page.named
    made = r.zip_run(str(run_dir))[n["results_zip"]]
    with zipfile.ZipFile(made) as zf:
        names = sorted(zf.namelist())
        assert zf.read("tower.safetensors") == final.read_bytes()
    assert names == sorted(["tower-000001.safetensors", "tower.safetensors", "tower_e000001_00.png", "tower_e000001_01.png",
                            "weights-20260101-000000.png"])
    assert Path(made).name == f"{run_dir.name}.zip"


def test_a_folder_that_is_not_a_known_run_gives_no_zip(page, tmp_path):
    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    (stranger / "secret.safetensors").write_bytes(b"x")
    r, n = page.handlers["results"], page.named
    assert r.zip_run(str(stranger))[n["results_zip"]] is None
    assert r.zip_run(None)[n["results_zip"]] is None
