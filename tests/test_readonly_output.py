"""An output folder made read-only during a run (docs/reliability.md "Paths and faults"): the run ends with one
sentence naming the folder, not a raw `OSError [Errno 30]` (the TensorBoard writer's, or a save's), and the files
saved before stay. A real tmpfs remounted read-only while the run trains (root only, as tests/tmpfs.py)."""

from __future__ import annotations

from tests.test_train_support import small_config, start_with_env, tiny_model  # noqa: F401

import errno
import json
import subprocess
import time

from loratrainer.run import events
from loratrainer.run import files as run_files
from tests.tmpfs import mounted_tmpfs


def test_an_output_folder_made_read_only_during_a_run_is_one_sentence_naming_it(tmp_path, tiny_model):
    with mounted_tmpfs(tmp_path / "out", "400m") as out:
        config = small_config(tmp_path, tiny_model, repeats=12, epoch=4, save_every_n_epochs=1,
                              logging_dir=str(tmp_path / "log"))
        run = start_with_env(config)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                if any(e["event"] == "checkpoint" for e in events.read_events(run.run_dir / run_files.EVENTS_FILE)[0]):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("no file was saved")
            subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
            code = run.wait(timeout=240)
        finally:
            run.kill()
            subprocess.run(["mount", "-o", "remount,rw", str(out)], check=False)
        ended = [json.loads(line) for line in (run.run_dir / run_files.EVENTS_FILE).read_text().splitlines()][-1]
        assert code == events.EXIT_CODES["error"] and ended["status"] == "error", ended
        assert ended["reason"] == (f"cannot write to {out}: it became read-only or not writable during the run; "
                                   "the files saved before it are kept"), ended
        assert (out / "last-000001.safetensors").is_file()  # the earlier file is kept


def test_the_tensorboard_writers_refusal_is_recognised_in_any_wording():
    from loratrainer.train.entry import not_writable

    tb = OSError(errno.EROFS, "Read-only file system", "/out/log/run/tensorboard/events.out.tfevents.1")
    assert not_writable(tb) == "/out/log/run/tensorboard/events.out.tfevents.1"
    try:
        try:
            raise tb
        except OSError as inner:
            raise RuntimeError("flush failed") from inner
    except RuntimeError as wrapped:
        assert not_writable(wrapped) == tb.filename
    assert not_writable(RuntimeError("Error while serializing: IoError(Os { code: 30, kind: ReadOnlyFilesystem })")) == ""
    assert not_writable(ValueError("shape mismatch")) is None
