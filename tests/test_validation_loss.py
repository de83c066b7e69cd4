"""Validation loss (issue 23), as sd-scripts defines it (its validation doc, train_network.py, train_util.py's
split_train_val): held-out images never trained on, the same noise and timesteps every evaluation, reported in
the events, TensorBoard, Results and `loratrainer compare`'s JSON, with the lowest marked."""

from __future__ import annotations

from tests.test_train_support import small_config, start_with_env, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import json
from pathlib import Path

import pytest

from loratrainer.run import events
from loratrainer.config import TrainingConfig, with_values
from loratrainer.config.kohya import export_kohya, import_kohya
from loratrainer.data.check import check_dataset
from loratrainer.run import files as run_files
from tests.datasets import make_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "kohya_ss"
PRESET = "sd15 - EDG_LoraOptiSettings.json"  # a real Kohya GUI preset (kohya_ss 45088f0, presets/lora/)


# -- the split: deterministic, per concept folder, counted out of the steps ---------------------------------------

def _config(root: Path, **values) -> TrainingConfig:
    data = make_dataset(root / "image", {"2_cat": 5, "3_dog": 4})
    base = {"train_data_dir": str(data), "max_resolution": "64,64", "min_bucket_reso": 64, "train_batch_size": 1, "seed": 42}
    return with_values(TrainingConfig(), {**base, **values})


def test_split_holds_out_a_share_of_each_folder_and_the_steps_count_only_training_images(tmp_path):
    whole = check_dataset(_config(tmp_path))
    split = check_dataset(_config(tmp_path, validation_split=0.25))
    again = check_dataset(_config(tmp_path, validation_split=0.25))
    held = [s.image_path for s in split.validation]
    # sd-scripts: round(n * split) of each folder (5 -> 1, 4 -> 1), regularisation folders never
    assert sorted(p.parent.name for p in held) == ["2_cat", "3_dog"]
    assert held == [s.image_path for s in again.validation]  # deterministic
    assert not set(held) & {s.image_path for s in split.samples}  # never a training image
    assert whole.images == 9 and split.images == 7 and split.to_json()["validation_images"] == 2
    assert whole.steps.samples_per_epoch == 5 * 2 + 4 * 3 and split.steps.samples_per_epoch == 4 * 2 + 3 * 3
    assert "validation images: 2" in split.format_text()
    from loratrainer.train.validation import build_validation

    cfg = _config(tmp_path, validation_split=0.25)
    assert build_validation(cfg, split.validation, False).images == 2  # batch size 1: two batches
    assert len(build_validation(with_values(cfg, {"max_validation_steps": 1}), split.validation, False).batches) == 1
    from loratrainer.gui.i18n import Translator
    from loratrainer.gui.tab_dataset import DatasetHandlers

    page = DatasetHandlers.__new__(DatasetHandlers)  # only its translator: steps_text reads the report
    for lang, words in (("en", "2 validation image(s) held out"), ("ko", "검증 이미지 2장")):
        page.t = Translator(lang)
        assert words in page.steps_text(split, split.steps)
    other_seed = {tuple(sorted(str(s.image_path) for s in check_dataset(_config(tmp_path, validation_split=0.25, validation_seed=k)).validation))
                  for k in range(1, 8)}
    assert len(other_seed) > 1  # the seed chooses which images


def test_a_validation_folder_is_held_out_whole(tmp_path):
    folder = make_dataset(tmp_path / "val", {"1_cat": 3})
    report = check_dataset(_config(tmp_path, validation_data_dir=str(folder)))
    assert sorted(s.image_path.name for s in report.validation) == sorted(p.name for p in (folder / "1_cat").glob("*.png"))
    assert report.images == 9 and report.steps.samples_per_epoch == 22


# -- the Kohya GUI: it has no field for these (kohya_ss 45088f0), its users pass sd-scripts' flags -----------------

def test_kohya_additional_parameters_import_and_export_the_validation_flags():
    # no Kohya GUI file at kohya_ss 45088f0 (nor in its history, nor on its gui-v2 branch) sets these keys: a real
    # preset with sd-scripts' flags added to additional_parameters, where the Kohya GUI passes them on
    data = json.loads((FIXTURES / "presets" / "lora" / PRESET).read_text())
    data["additional_parameters"] = "--validation_split 0.1 --validation_seed 7 --validate_every_n_steps 50 --max_validation_steps 4"
    config, report = import_kohya(data)
    o = config.training
    assert (o.validation_split, o.validation_seed, o.validate_every_n_steps, o.max_validation_steps) == (0.1, 7, 50, 4)
    assert report.mentions("additional_parameters")
    out, _ = export_kohya(config)
    assert out["additional_parameters"] == "--validation_split 0.1 --validation_seed 7 --validate_every_n_steps 50 --max_validation_steps 4"
    assert import_kohya(out)[0].training == config.training  # round trip
    assert export_kohya(TrainingConfig())[0]["additional_parameters"] == ""  # nothing set: nothing written


def test_kohya_top_level_keys_as_the_gui_v2_names_them_import():
    # kohya_ss branch feat/gui-v2-foundation (kohya_gui_v2/tabs/lora_fields_generated.py) saves them as keys of
    # these names, sd-scripts' own
    data = json.loads((FIXTURES / "presets" / "lora" / PRESET).read_text())
    data.update({"validation_split": 0.2, "validate_every_n_epochs": 2})
    config, _ = import_kohya(data)
    assert (config.training.validation_split, config.training.validate_every_n_epochs) == (0.2, 2)


# -- a real run on the tiny model (one run, shared) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def validated_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("validated")
    # 3 images: round(3 * 0.34) = 1 held out, 2 x 2 repeats trained, batch 2 -> 2 steps an epoch, 4 in all; a
    # validation every 2 steps and at each epoch's end: steps 2 and 4 are each evaluated twice, on the same weights
    config = small_config(root, tiny_model, images=3, repeats=2, validation_split=0.34, validate_every_n_steps=2,
                          learning_rate=1e-2)
    run = start_with_env(config, {"LORATRAINER_TRACE_BATCHES": "1"})
    code = run.wait(timeout=300)
    log = (run.run_dir / run_files.LOG_FILE).read_text() if (run.run_dir / run_files.LOG_FILE).is_file() else ""
    assert code == 0, log[-3000:]
    return config, run.run_dir


@pytest.mark.slow
def test_validation_images_are_never_trained_and_equal_weights_give_equal_numbers(validated_run):
    config, run_dir = validated_run
    held = {str(s.image_path) for s in check_dataset(config).validation}
    trained = [img for line in (run_dir / run_files.batches_trace_name(0)).read_text().splitlines() for img in json.loads(line)["images"]]
    assert len(held) == 1 and len(trained) == 8  # 2 epochs x 2 batches x 2 images
    assert not held & set(trained)
    evs = events.read_events(run_dir / run_files.EVENTS_FILE)[0]
    vals = [e for e in evs if e["event"] == "validation"]
    assert [(e["kind"], e["step"], e["epoch"]) for e in vals] == [("step", 2, 1), ("epoch", 2, 1), ("step", 4, 2), ("epoch", 4, 2)]
    assert all(e["images"] == 1 for e in vals)
    # the same weights, evaluated twice: the same number to the last bit; other weights: another number
    assert vals[0]["loss"] == vals[1]["loss"] and vals[2]["loss"] == vals[3]["loss"]
    assert vals[0]["loss"] != vals[2]["loss"]
    state = events.summarize(evs)
    assert [v[:2] for v in state.validation_history] == [(2, 1), (2, 1), (4, 2), (4, 2)]
    lowest = events.lowest_validation(state.validation_history)
    assert lowest[2] == min(e["loss"] for e in vals)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run_dir / run_files.TENSORBOARD_DIR))
    board.Reload()
    assert [(s.step, round(s.value, 5)) for s in board.Scalars("loss/validation")] == [(e["step"], round(e["loss"], 5)) for e in vals]


@pytest.mark.slow
def test_results_and_compare_show_each_files_validation_loss_and_mark_the_lowest(validated_run):
    from loratrainer.compare.inputs import resolve
    from loratrainer.compare.runs import read_run

    _, run_dir = validated_run
    record = read_run(run_dir)
    by_step = {v[0]: v[2] for v in record.validations}
    assert [(f.kind, f.step) for f in record.files] == [("epoch", 2), ("epoch", 4), ("final", 4)]
    assert [f.validation_loss for f in record.files] == [by_step[2], by_step[4], by_step[4]]
    best = min(record.files, key=lambda f: (f.validation_loss, f.step))
    assert [f.lowest_validation for f in record.files] == [f is best for f in record.files]
    from loratrainer.gui.tab_results import read_metadata

    meta = read_metadata(record.files[0].path)  # sd-scripts' ss_ keys for it
    assert meta["ss_num_validation_images"] == "1" and meta["ss_validation_split"] == "0.34"
    assert meta["ss_validate_every_n_steps"] == "2" and meta["ss_validation_seed"] == "None"
    assert meta["ss_num_train_images"] == "4"  # 2 training images x 2 repeats: the held-out one is not counted
    extra = resolve([str(run_dir)]).validation()  # what `loratrainer compare` writes into its JSON sidecar
    assert extra["validation_loss"] == {"epoch 1": by_step[2], "epoch 2": by_step[4], "final (step 4)": by_step[4]}
    assert extra["lowest_validation_loss"] == ("epoch 1" if by_step[2] <= by_step[4] else "epoch 2")
    from loratrainer.gui.tab_results import ResultsHandlers

    from loratrainer.gui.i18n import Translator

    handlers = ResultsHandlers.__new__(ResultsHandlers)  # only its translator: the cell reads the file record
    handlers.t = Translator("en")
    cells = [handlers.validation_cell(f) for f in record.files]
    assert [c.split()[0] for c in cells] == [f"{f.validation_loss:.4f}" for f in record.files]
    assert [("★" in c) for c in cells] == [f.lowest_validation for f in record.files]


@pytest.mark.slow
def test_an_evaluation_is_deterministic_leaves_training_alone_and_uses_no_gradients(tmp_path, tiny_model):
    import torch
    from accelerate import Accelerator

    from loratrainer.train.loop import compute_loss
    from loratrainer.train.setup import build_trainer
    from loratrainer.train.validation import evaluate

    config = small_config(tmp_path, tiny_model, images=3, validation_split=0.34, network_dropout=0.5)
    t = build_trainer(config, tmp_path, Accelerator(cpu=True), seed=7)
    assert t.validation.images == 1
    t.unet.train()
    state = torch.get_rng_state()
    first = evaluate(t, t.validation, compute_loss)
    assert torch.equal(torch.get_rng_state(), state)  # the training noise that follows is not shifted
    assert evaluate(t, t.validation, compute_loss) == first  # dropout is off in eval mode, the noise is fixed
    assert t.unet.training  # back to training mode
    assert all(p.grad is None for p in t.params)


def test_the_terminal_says_each_validation_loss_and_the_lowest(tmp_path):
    import io
    from types import SimpleNamespace

    from loratrainer.launch.follow import _Lines, _report_end

    evs = [{"event": "validation", "step": s, "epoch": s // 2, "loss": loss, "kind": "epoch", "images": 3}
           for s, loss in ((2, 0.25), (4, 0.125), (6, 0.5))]
    state = events.summarize(evs + [{"event": "ended", "status": "finished", "step": 6, "epoch": 3, "exit_code": 0}])
    out = io.StringIO()
    _Lines(out).update(state, evs)
    assert out.getvalue().splitlines() == ["validation loss 0.2500 at step 2 (epoch 1, 3 images)",
                                           "validation loss 0.1250 at step 4 (epoch 2, 3 images)",
                                           "validation loss 0.5000 at step 6 (epoch 3, 3 images)"]
    end = io.StringIO()
    _report_end(SimpleNamespace(run_dir=tmp_path), state, 0, end)
    assert "lowest validation loss 0.1250 at step 4 (epoch 2)" in end.getvalue()
