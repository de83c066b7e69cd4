"""Faults with real causes (docs/reliability.md, "Faults"): a real small file system that fills during a real save,
a stop pressed while a sample renders, SIGKILL of a real process group, saving a config twice, file modes under
the user's umask, and the hidden .partial a kill during a save leaves."""

from tests.test_train_support import small_config, start_with_env, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from loratrainer.run import events
from loratrainer.run import files as run_files
from loratrainer.config import TrainingConfig, with_values
from loratrainer.train.entry import disk_full
from loratrainer.launch.input_checks import PARTIAL_GRACE_S, remove_stale_partials
from loratrainer.launch.start import RunProcess
from tests.tmpfs import mounted_tmpfs


@pytest.fixture
def small_fs(tmp_path):
    """A real tmpfs of 1 MB, mounted for the test and unmounted after."""
    with mounted_tmpfs(tmp_path / "small", "1m") as mount:
        yield mount


def test_a_real_full_disk_during_a_lora_save_is_recognised(small_fs):
    from loratrainer.model.saving import save_lora

    with pytest.raises(Exception) as info:
        save_lora(small_fs / "big.safetensors", {"w": torch.zeros(1024 * 1024)}, {}, overwrite=False)
    assert type(info.value).__name__ == "SafetensorError"  # not an OSError: errno alone missed it
    assert disk_full(info.value) is not None
    assert list(small_fs.iterdir()) == []  # the temporary file is gone, nothing half-written
    with pytest.raises(RuntimeError) as wrapped:  # torch.save reports it inside a RuntimeError chain
        try:
            (small_fs / "x.bin").write_bytes(b"\0" * 2 * 1024 * 1024)
        except OSError as exc:
            raise RuntimeError("saving failed") from exc
    assert disk_full(wrapped.value) is not None  # found through __cause__
    assert disk_full(ValueError("shape mismatch")) is None


@pytest.fixture
def filling_fs(tmp_path):
    """A real tmpfs large enough for the launcher's free-space check, to be filled while the run trains."""
    with mounted_tmpfs(tmp_path / "out", "400m") as mount:
        yield mount


def _fill(folder: Path, leave: int = 8 * 1024) -> None:
    st = os.statvfs(folder)
    size = st.f_bavail * st.f_frsize - leave
    with open(folder / "filler.bin", "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, size)


def test_a_disk_that_fills_during_a_real_run_ends_as_disk_full(tmp_path, tiny_model, filling_fs):
    config = small_config(tmp_path, tiny_model, epoch=2, logging_dir=str(tmp_path / "log"))
    assert config.folders.output_dir == str(filling_fs)
    stale = filling_fs / ".last-000001.safetensors.abcd1234.partial"  # what an earlier killed save left
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * PARTIAL_GRACE_S,) * 2)
    run = start_with_env(config)
    assert not stale.exists()  # the start cleans the partial files of its own output name
    _fill(filling_fs)  # the model is still loading: the first save will find the disk full
    code = run.wait(timeout=300)
    ended = [json.loads(line) for line in (run.run_dir / run_files.EVENTS_FILE).read_text().splitlines()][-1]
    assert code == events.EXIT_CODES["disk_full"], ended
    assert ended["status"] == "disk_full" and ended["reason"].startswith("disk full")
    assert "SafetensorError" not in ended["reason"]
    assert events.headline(events.summarize([ended])) == "disk full"
    assert not [p for p in filling_fs.iterdir() if p.name != "filler.bin"]  # no LoRA, no .partial


def test_sigkill_of_the_whole_run_exits_137_like_a_shell(tmp_path):
    popen = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    run = RunProcess(run_dir=tmp_path, popen=popen, argv=["sh"])
    time.sleep(0.3)
    run.kill()  # SIGKILL to the process group, as the GUI's Kill does
    code = run.wait(timeout=30)
    assert code == 137 and events.describe_exit(code) == "killed (signal 9)"  # before: -9, exit status 247


def test_saving_the_config_twice_keeps_every_earlier_file(tmp_path):
    from loratrainer.gui.server import neutralise_gradio_env

    temp = neutralise_gradio_env()
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    blocks, ui = build_page("en", Jobs(tmp_path / "state"), Display(temp / "display"))
    h = ui.handlers["training"]
    target = tmp_path / "my.json"
    target.write_text('{"original": true}\n')
    (tmp_path / "my.json.bak").write_text("the user's own backup\n")
    data = {c: v for c, v in ui.show_config(TrainingConfig()).items()}
    data[ui.named["config_path"]] = str(target)
    h.save_file(data)
    time.sleep(1.1)  # a second save in a later second
    h.save_file(data)
    h.save_file(data)  # and one in the same second
    backups = sorted(tmp_path.glob("my.json.*.bak"))
    assert len(backups) == 3
    assert backups[0].read_text() == '{"original": true}\n'  # before: overwritten by the second save
    assert (tmp_path / "my.json.bak").read_text() == "the user's own backup\n"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_files_follow_the_umask(tmp_path, umask, mode):
    code = (
        "import os, sys, torch\n"
        f"os.umask({umask})\n"
        "from loratrainer.config import TrainingConfig, save_config\n"
        "from loratrainer.caption.writer import write_caption\n"
        "from loratrainer.model.saving import save_lora\n"
        "from pathlib import Path\n"
        "d = Path(sys.argv[1])\n"
        "save_config(TrainingConfig(), d / 'c.json')\n"
        "write_caption(d / 'a.txt', 'a dog')\n"
        "save_lora(d / 'l.safetensors', {'lora_unet_x.lora_down.weight': torch.zeros(2, 2)}, {})\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("c.json", "a.txt", "l.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name  # before: 0600 whatever the umask


def test_stale_partials_of_this_output_name_are_removed_and_others_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    old = time.time() - 2 * PARTIAL_GRACE_S
    ours = [".last.safetensors.k2j3h4.partial", ".last-000003.safetensors.zz.partial",
            ".last-step00000020.safetensors.q.partial", ".last-interrupted-2.safetensors.x.partial"]
    others = [".lastly.safetensors.k.partial", ".other.safetensors.k.partial", "last.safetensors", ".last-notes.partial"]
    for name in ours + others:
        (out / name).write_bytes(b"x")
        os.utime(out / name, (old, old))
    fresh = out / ".last-000004.safetensors.new.partial"  # a save in progress right now (another run)
    fresh.write_bytes(b"x")
    config = with_values(TrainingConfig(), {"output_dir": str(out), "output_name": "last"})
    removed = remove_stale_partials(config)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in out.iterdir()) == sorted(others + [fresh.name])


def test_stop_pressed_while_a_sample_renders_is_seen_between_denoising_steps(tmp_path, tiny_model):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from loratrainer.train.sampling import maybe_sample
    from loratrainer.train.saving import Saver
    from loratrainer.train.setup import build_trainer

    set_seed(7)
    config = small_config(tmp_path, tiny_model, images=2, sample_at_first=True,
                          sample_prompts="a long render --w 64 --h 64 --s 200\nanother --w 64 --h 64 --s 200")
    t = build_trainer(config, tmp_path, Accelerator(cpu=True), seed=7)
    t.saver = Saver(t, write=lambda path, p: None)
    unet = t.accelerator.unwrap_model(t.unet)
    calls = []

    def press_stop_at_the_third_step(module, args, output):
        calls.append(1)
        if len(calls) == 3:  # the user presses Stop while the first image renders (the GUI writes this file)
            (tmp_path / run_files.STOP_FILE).write_text("stop requested\n")

    hook = unet.register_forward_hook(press_stop_at_the_third_step)
    try:
        assert maybe_sample(t, first=True) == []  # no half-denoised image is written, the second prompt not begun
    finally:
        hook.remove()
    assert len(calls) <= 4, len(calls)  # before: all 200 steps of the image, then the check
    assert not list((tmp_path / "out" / "sample").glob("*.png")) if (tmp_path / "out" / "sample").exists() else True


def test_a_run_folder_whose_config_cannot_be_read_ends_as_an_error_with_exit_code_1(tmp_path, monkeypatch):
    """The trainer's early failure (config unreadable, before accelerate starts) ends the event stream with the
    reason and exits 1, so the launcher and the queue count it as failed, not finished (a merge once dropped the
    return and the process exited 0)."""
    from loratrainer.run import events
    from loratrainer.run import files as run_files
    from loratrainer.train import entry

    monkeypatch.setattr(entry, "watch_owner", lambda run_dir: None, raising=False)
    (tmp_path / run_files.CONFIG_FILE).write_text("{ not json", encoding="utf-8")
    assert entry.main(["--run-dir", str(tmp_path)]) == events.EXIT_CODES["error"] == 1
    ended = [e for e in events.read_events(tmp_path / run_files.EVENTS_FILE, 0)[0] if e["event"] == "ended"]
    assert [e["status"] for e in ended] == ["error"] and ended[0]["exit_code"] == 1
