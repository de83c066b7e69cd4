"""Every handler of the Dataset and Training tabs, called the way Gradio calls them: with {component: value}
for the set of inputs, returning {component: value}. Components are found by name (field path), never by
position."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loratrainer.config import TrainingConfig, load_config
from tests.datasets import make_concept, make_dataset, make_image, make_zero_byte



@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from loratrainer.gui.server import neutralise_gradio_env

    temp = neutralise_gradio_env()
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    state = tmp_path_factory.mktemp("state")
    blocks, ui = build_page("en", Jobs(state), Display(temp / "display"))
    return ui


def form(ui, config: TrainingConfig | None = None, **named) -> dict:
    """The page's input values: every field of `config`, plus named components (by their UiContext name)."""
    data = ui.show_config(config or TrainingConfig())
    for name, value in named.items():
        data[ui.named[name]] = value
    return data


def by_path(ui, out: dict) -> dict:
    return ui.paths_of(out)


def test_every_schema_field_is_on_the_page_once(page):
    from loratrainer.config import field_specs
    from loratrainer.gui.form import elem_id

    assert set(page.fields) == {s.path for s in field_specs()}
    assert len({id(c) for c in page.fields.values()}) == len(page.fields)
    assert all(c.elem_id == elem_id(p) for p, c in page.fields.items())


def test_values_round_trip_by_name(page):
    config = TrainingConfig().model_copy(deep=True)
    from loratrainer.config import with_values

    config = with_values(config, {"network.network_dim": 32, "optimizer.unet_lr": None, "model.max_token_length": 150})
    data = page.show_config(config)
    # Gradio hands numbers back as floats and dropdown values as strings: the form coerces them by schema.
    data[page.fields["network.network_dim"]] = 32.0
    data[page.fields["model.max_token_length"]] = "150"
    assert page.read_config(data) == config


def test_bad_value_names_the_field(page):
    from loratrainer.errors import UserError

    data = form(page)
    data[page.fields["network.network_dim"]] = 0
    with pytest.raises(UserError, match="network.network_dim"):
        page.read_config(data)


def test_prepare_check_steps_and_repeats(page, tmp_path):
    h = page.handlers["dataset"]
    src = tmp_path / "photos"
    for i in range(4):
        make_image(src / f"p{i}.png", (96, 64) if i % 2 else (64, 96))
    out = h.prepare(form(page, prep_src=str(src), prep_dest=str(tmp_path / "project"), prep_name="my style", prep_repeats=10, prep_reg=""))
    values = by_path(page, out)
    assert values["folders.train_data_dir"] == str(tmp_path / "project" / "image")
    assert (tmp_path / "project" / "image" / "10_my style").is_dir() and (tmp_path / "project" / "model").is_dir()
    assert "4 image" in out[page.named["prep_message"]]

    config = TrainingConfig().model_copy(update={})
    data = form(page, config)
    for path in ("folders.train_data_dir", "folders.output_dir", "folders.logging_dir"):
        data[page.fields[path]] = values[path]
    data[page.fields["training.epoch"]] = 3
    checked = h.check(data)
    report = checked[page.named["report"]]
    assert report.ok
    assert "Ready to train" in checked[page.named["check_summary"]]
    assert checked[page.named["concepts"]] == [["10_my style", 10, 4, 40]]
    steps = checked[page.named["steps"]]
    # 4 images x 10 repeats = 40 samples, batch size 1: 40 steps per epoch, 3 epochs (counted here, not by the product)
    assert "40 steps × 3 epochs = 120 steps in total" in steps and report.steps.total_steps == 120
    assert sum(row[2] for row in checked[page.named["buckets"]]) == 40

    # Live step calculator: batch size 2 recounts from the real buckets without touching the disk.
    data[page.named["report"]] = report
    data[page.fields["training.train_batch_size"]] = 2
    live = h.live_steps(data)
    assert "batches of up to 2" in live and f"{report.steps.total_steps} steps in total" not in live

    # Repeats: edit 10 -> 20, confirm, the folder is renamed and the check re-runs.
    proposal = h.propose_renames([["10_my style", 20, 4, 40]], values["folders.train_data_dir"])
    assert proposal[page.named["pending"]] == [(str(tmp_path / "project/image/10_my style"), str(tmp_path / "project/image/20_my style"))]
    assert (tmp_path / "project/image/10_my style").is_dir()  # nothing renamed before confirmation
    data[page.named["pending"]] = proposal[page.named["pending"]]
    done = h.apply_renames(data)
    assert (tmp_path / "project/image/20_my style").is_dir() and not (tmp_path / "project/image/10_my style").exists()
    assert done[page.named["concepts"]] == [["20_my style", 20, 4, 80]]
    assert proposal[page.named["rename_buttons"]]["visible"] is True
    assert done[page.named["rename_buttons"]]["visible"] is False  # no Rename/Cancel left once it is done


def test_prepare_repeats_empty_is_suggested_and_bad_ones_are_a_sentence(page, tmp_path):
    """The Repeats box starts empty; empty means the suggested number; 0 or text is one sentence, not an Error badge."""
    h, n = page.handlers["dataset"], page.named
    assert n["prep_repeats"].value == ""
    src = tmp_path / "photos"
    for i in range(4):
        make_image(src / f"p{i}.png")
    out = h.prepare(form(page, prep_src=str(src), prep_dest=str(tmp_path / "project"), prep_name="cat", prep_repeats="", prep_reg=""))
    assert "150 repeats" in out[n["prep_message"]] and (tmp_path / "project" / "image" / "150_cat").is_dir()
    for bad in ("0", "-3", "two", "1.5"):
        out = h.prepare(form(page, prep_src=str(src), prep_dest=str(tmp_path / "p2"), prep_name="cat", prep_repeats=bad, prep_reg=""))
        assert set(out) == {n["prep_message"]} and "Repeats must be a whole number of at least 1" in out[n["prep_message"]]
    assert not (tmp_path / "p2").exists()
    out = h.prepare(form(page, prep_src=str(src), prep_dest=str(tmp_path / "p3"), prep_name="cat", prep_repeats="12", prep_reg=""))
    assert (tmp_path / "p3" / "image" / "12_cat").is_dir()


def test_prepare_refusal_is_a_message(page, tmp_path):
    h = page.handlers["dataset"]
    out = h.prepare(form(page, prep_src=str(tmp_path / "missing"), prep_dest=str(tmp_path / "p"), prep_name="x", prep_repeats=None, prep_reg=""))
    assert out[page.named["prep_message"]].startswith("**Error:**")
    assert not (tmp_path / "p").exists()


def test_check_lists_problem_images_with_thumbnails(page, tmp_path):
    h = page.handlers["dataset"]
    root = make_dataset(tmp_path / "image", {"5_cat": 2})
    make_image(root / "5_cat" / "tiny.png", (40, 40))
    make_zero_byte(root / "5_cat" / "empty.png")
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(root)
    out = h.check(data)
    problems = out[page.named["problems"]]
    assert any("empty.png" in row[1] and row[0] in ("error", "warning") for row in problems) and any("tiny.png" in row[1] for row in problems)
    thumbs = out[page.named["problem_images"]]
    assert any("tiny.png" in caption for _, caption in thumbs)
    assert all(Path(p).is_relative_to(page.display.root) for p, _ in thumbs)


def test_path_checks_as_you_type(page, tmp_path):
    h = page.handlers["dataset"]
    root = make_dataset(tmp_path / "image", {"10_dog": 2, "cat": 1})
    assert h.check_folder(str(root), "train").startswith("✓ 1 concept folder(s), 2 image(s)")
    assert "cat" in h.check_folder(str(root), "train")
    assert "choose its parent" in h.check_folder(str(root / "10_dog"), "train")
    assert h.check_folder(str(tmp_path / "nope"), "train").startswith("✗")
    assert h.check_folder(str(tmp_path / "new"), "output") == "The folder will be created."


def test_file_browser_lists_folders_first_without_hidden(page, tmp_path):
    from loratrainer.gui.filebrowser import list_folder, start_folder

    (tmp_path / "b_dir").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "a.safetensors").write_bytes(b"x")
    listing = list_folder(tmp_path, files=True, t=page.t)
    labels = [label for label, _ in listing.choices]
    assert labels[0].endswith("..") and labels[1] == "📁 b_dir" and "a.safetensors" in labels
    assert not any("hidden" in label for label in labels)
    assert [label for label, _ in list_folder(tmp_path, files=False, t=page.t).choices] == labels[:2]
    assert start_folder(str(tmp_path / "not" / "yet")) == tmp_path


def test_presets_load_keeping_folders_and_save(page, tmp_path, monkeypatch):
    monkeypatch.setenv("LORATRAINER_PRESET_DIR", str(tmp_path / "presets"))
    h = page.handlers["training"]
    choices = h.preset_choices()
    assert choices, "the shipped presets are listed"
    label, path = choices[0]
    data = form(page, preset=path)
    data[page.fields["folders.train_data_dir"]] = "/data/image"
    data[page.fields["folders.output_name"]] = "mine"
    out = h.load_preset(data)
    values = by_path(page, out)
    assert values["folders.train_data_dir"] == "/data/image" and values["folders.output_name"] == "mine"
    # every value the preset file sets is in the form (read from the file itself, not through the product's loader)
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    preset_values = {f"{group}.{name}": v for group, fields in raw.items() if group not in ("schema_version", "preset")
                     for name, v in fields.items()}
    from loratrainer.gui.form import read_rate  # rate boxes are text boxes (issue 22): compared as read

    assert preset_values and {k: read_rate(values[k]) for k in preset_values} == preset_values
    assert "loaded" in out[page.named["config_message"]]
    assert f"Preset **{raw['preset']['name']}** loaded" in out[page.named["config_message"]]  # its name, not the file stem

    saved = h.save_preset(form(page, preset_name="my preset"))
    assert "Preset saved" in saved[page.named["config_message"]]
    assert any("my preset" in lab for lab, _ in h.preset_choices())


def test_import_kohya_config_reports_what_was_ignored(page):
    h = page.handlers["training"]
    fixture = Path(__file__).parent / "fixtures" / "kohya_ss" / "test" / "config" / "locon-Prodigy.json"
    out = h.load_file(form(page, config_path=str(fixture), config_upload=None))
    message = out[page.named["config_message"]]
    assert "Kohya config" in message and "```" in message
    assert "MUST BE CHANGED BEFORE TRAINING" in message and "bucket_reso_steps" in message
    assert len(by_path(page, out)) == len(page.fields)


def test_load_dialog_refuses_another_model_family_naming_family_and_key(page):
    h = page.handlers["training"]
    fixture = Path(__file__).parent / "fixtures" / "kohya_ss" / "presets" / "lora" / "flux1D - adamw8bit fp8.json"
    before = form(page, config_path=str(fixture), config_upload=None)
    out = h.load_file(before)
    message = out[page.named["config_message"]]
    assert "FLUX.1" in message and "flux1_checkbox = true" in message
    assert set(out) == {page.named["config_message"]}  # the form keeps what it had


def test_load_dialog_takes_a_kohya_sdxl_config_as_sdxl(page):
    h = page.handlers["training"]
    fixture = Path(__file__).parent / "fixtures" / "kohya_ss" / "presets" / "lora" / "SDXL - LoRA AI_Now ADamW v1.0.json"
    out = h.load_file(form(page, config_path=str(fixture), config_upload=None))
    assert "model family 'sdxl'" in out[page.named["config_message"]]
    values = by_path(page, out)
    assert values["model.model_family"] == "sdxl" and values["precision.no_half_vae"] is True
    assert values["buckets.max_resolution"] == "1024,1024"


def test_save_and_load_our_json_with_backup(page, tmp_path):
    h = page.handlers["training"]
    target = tmp_path / "cfg.json"
    config = TrainingConfig()
    data = form(page, config, config_path=str(target), config_upload=None)
    data[page.fields["network.network_dim"]] = 16
    assert "Config saved" in h.save_file(data)[page.named["config_message"]]
    assert load_config(target).network.network_dim == 16
    data[page.fields["network.network_dim"]] = 24
    message = h.save_file(data)[page.named["config_message"]]
    backups = list(tmp_path.glob("cfg.json.*.bak"))  # timestamped, as presets keep them (issue 10)
    assert len(backups) == 1 and backups[0].name in message and load_config(backups[0]).network.network_dim == 16
    loaded = h.load_file(form(page, config_path=str(target), config_upload=None))
    assert by_path(page, loaded)["network.network_dim"] == 24


def test_show_command_is_the_accelerate_argv(page, tmp_path):
    h = page.handlers["training"]
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(make_dataset(tmp_path / "img", {"2_x": 2}))
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    data[page.fields["optimizer.optimizer"]] = "AdamW"  # AdamW8bit, the default, is refused without a CUDA GPU
    data[page.fields["folders.output_name"]] = "my $(touch x) lora; rm -rf ~"
    command = h.show_command(data)[page.named["command"]]
    assert "accelerate.commands.launch" in command and "loratrainer.train.entry" in command
    assert "'" in command  # the odd name is quoted for display; the real start uses an argv list


def test_start_refused_starts_nothing(page, tmp_path):
    h = page.handlers["training"]
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(tmp_path / "missing")
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    out = h.start(data)
    status = out[page.named["run_message"]]  # the button's answer, apart from the run status
    assert status.startswith("**Not started.**")
    assert out[page.named["status"]].startswith("Not started: the reason is above")  # not "No run yet" (issue 22)
    assert out[page.named["progress"]] == "" and out[page.named["gallery"]] == [] and out[page.named["run_dir"]] is None
    assert "```" in status and str(tmp_path / "missing") in status  # the check's report keeps its lines
    assert page.jobs.runs() == []


def test_start_refuses_a_windows_path_naming_the_setting_and_creates_nothing(page, tmp_path, monkeypatch):
    h = page.handlers["training"]
    monkeypatch.chdir(tmp_path)
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(make_dataset(tmp_path / "img", {"2_x": 2}))
    data[page.fields["folders.output_dir"]] = "C:\\Users\\me\\lora\\model"
    status = h.start(data)[page.named["run_message"]]  # the button's answer, apart from the run status
    assert status.startswith("**Not started.**") and "Windows path" in status and "C:" in status
    assert "Output folder (model) is a Windows path" in status  # named as the page labels it (issue 11), the CLI says the path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]  # no ./C:\Users... folder
    assert page.jobs.runs() == []


def test_save_as_kohya_config_round_trips(page, tmp_path):
    from loratrainer.config.presets import load_any_config

    h = page.handlers["training"]
    target = tmp_path / "kohya.json"
    data = form(page, config_path=str(target), config_upload=None)
    data[page.fields["network.network_dim"]] = 32
    message = h.save_kohya(data)[page.named["config_message"]]
    assert "Kohya GUI config saved" in message
    raw = json.loads(target.read_text())
    assert raw["network_dim"] == 32 and "schema_version" not in raw  # flat, Kohya's layout
    config, report = load_any_config(target)
    assert report.format == "kohya" and config.network.network_dim == 32


def test_show_command_can_be_run(page, tmp_path):
    """Show command writes the page's settings to a config file and shows `loratrainer train --config FILE`
    (runnable as shown), then the accelerate command it becomes."""
    import shlex

    h = page.handlers["training"]
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(make_dataset(tmp_path / "img", {"2_x": 2}))
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    data[page.fields["optimizer.optimizer"]] = "AdamW"  # AdamW8bit, the default, is refused without a CUDA GPU
    data[page.fields["folders.output_name"]] = "house"
    data[page.fields["network.network_dim"]] = 12
    text = h.show_command(data)[page.named["command"]]
    lines = text.splitlines()
    train = next(line for line in lines if " train --config " in line)
    argv = shlex.split(train)
    config_file = Path(argv[argv.index("--config") + 1])
    assert config_file.is_file() and load_config(config_file).network.network_dim == 12
    assert argv[argv.index("train") - 1].endswith("loratrainer")
    assert any("accelerate.commands.launch" in line and "loratrainer.train.entry" in line for line in lines)
    # the file the run would write exists: refused as Start refuses it, or, told to rename, the name the run gets
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "house.safetensors").write_bytes(b"x")
    out = h.show_command(data)
    assert out[page.named["command"]] == "" and "Output name" in out[page.named["run_message"]], out[page.named["run_message"]]
    data[page.fields["saving.existing_output"]] = "rename"
    assert "house_2_<YYYYmmdd-HHMMSS>" in h.show_command(data)[page.named["command"]]
    # a bad value: the answer under the buttons names the field by its label, and no command is shown
    data[page.fields["network.network_dim"]] = 0
    out = h.show_command(data)
    assert "Network rank (dimension)" in out[page.named["run_message"]] and out[page.named["command"]] == ""


def test_show_command_runs_starts_checks_and_shows_the_refusal(page, tmp_path):
    """As `loratrainer train --print-command` does: settings Start would refuse get Start's refusal (one
    sentence, the setting named by its label) and no command, which could not be run."""
    h = page.handlers["training"]
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(tmp_path / "missing")
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    out = h.show_command(data)
    said = out[page.named["run_message"]]
    assert said.startswith("**Start would refuse these settings") and str(tmp_path / "missing") in said, said
    assert out[page.named["command"]] == ""
    data[page.fields["folders.train_data_dir"]] = str(make_dataset(tmp_path / "img", {"2_x": 2}))
    data[page.fields["folders.output_dir"]] = "C:\\Users\\me\\lora\\model"
    said = h.show_command(data)[page.named["run_message"]]
    assert "Output folder (model) is a Windows path" in said, said
    assert page.jobs.runs() == []


def test_show_command_says_what_start_would_ask_about_above_the_command(page, tmp_path):
    """Show command runs Start's checks: the warnings Start would ask about (a learning rate far above what the
    optimizer takes, a warm-up the scheduler ignores) come above the command, in the page's language, as shell
    comments (the box stays runnable as copied); settings with nothing to ask about show none."""
    import copy
    import shlex

    from loratrainer.gui.i18n import Translator
    from loratrainer.gui.tab_training import TrainingHandlers

    data = form(page)
    values = {"folders.train_data_dir": str(make_dataset(tmp_path / "img", {"2_x": 2})), "folders.output_dir": str(tmp_path / "model"),
              "optimizer.optimizer": "AdamW", "folders.output_name": "warned"}
    for path, value in values.items():
        data[page.fields[path]] = value
    quiet = page.handlers["training"].show_command(data)[page.named["command"]]
    assert quiet.startswith("# The settings on this page") and "Start would ask" not in quiet
    data[page.fields["optimizer.learning_rate"]] = "1.0"  # "0,0001" typed where a decimal comma is not read
    data[page.fields["optimizer.lr_scheduler"]] = "constant"
    data[page.fields["optimizer.lr_warmup_steps"]] = 20
    english = page.handlers["training"].show_command(data)[page.named["command"]]
    korean_page = copy.copy(page)
    korean_page.t = Translator("ko")
    korean = TrainingHandlers(korean_page).show_command(data)[page.named["command"]]
    for text in (english, korean):
        head, _, command = text.partition("\n\n")
        assert head.count("\n# - ") == 2 and "loratrainer.train.entry" in command and "# - " not in command, text
        assert all(shlex.split(line, comments=True) == [] for line in head.splitlines())  # comments only: runnable as copied
    assert "# - Learning rate is 1: far above what AdamW usually takes" in english, english
    assert "# - LR scheduler is constant, which has no warm-up: LR warm-up steps is ignored" in english, english
    ko = Translator("ko")
    assert f"# - {ko.label('optimizer.learning_rate')} 값이 1입니다" in korean and "far above" not in korean, korean
    assert page.jobs.runs() == []


def test_training_tab_counts_images_and_steps_live(page, tmp_path):
    h, d, n = page.handlers["training"], page.handlers["dataset"], page.named
    root = make_dataset(tmp_path / "img", {"5_house": 4})
    make_zero_byte(root / "5_house" / "empty.png")
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(root)
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    assert "Dataset" in h.run_summary(data)  # not checked yet: says where
    report = d.check(data)[n["report"]]
    data[n["report"]] = report
    data[page.fields["training.epoch"]] = 2
    data[page.fields["training.train_batch_size"]] = 2
    text = h.run_summary(data)
    assert "4 images, 1 skipped, 20 steps" in text, text  # 4 x 5 repeats / batch 2 = 10 a epoch
    data[page.fields["training.epoch"]] = 3
    assert "30 steps" in h.run_summary(data)


def test_dataset_and_training_tabs_show_a_dataset_configs_subsets(page, tmp_path):
    """Issue 23: with a Kohya dataset TOML the check lists its subsets with their repeats, the Training summary names
    them, and the live recount keeps the TOML's batch size (what the trainer uses) whatever the form says."""
    h, d, n = page.handlers["training"], page.handlers["dataset"], page.named
    make_dataset(tmp_path / "data", {"one": 2, "two": 1}, captions=False)
    toml = tmp_path / "set.toml"
    toml.write_text("[general]\nresolution = 64\nmin_bucket_reso = 64\nbatch_size = 2\n[[datasets]]\n"
                    "[[datasets.subsets]]\nimage_dir = 'data/one'\nnum_repeats = 1\n"
                    "[[datasets.subsets]]\nimage_dir = 'data/two'\nnum_repeats = 3\n", encoding="utf-8")
    data = form(page)
    data[page.fields["folders.dataset_config"]] = str(toml)
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    checked = d.check(data)
    report = checked[n["report"]]
    assert report.ok and checked[n["concepts"]] == [["one", 1, 2, 2], ["two", 3, 1, 3]]
    data[n["report"]] = report
    data[page.fields["training.epoch"]] = 1
    data[page.fields["training.train_batch_size"]] = 1  # the TOML's 2 wins, as in sd-scripts
    text = h.run_summary(data)
    assert "3 images, 0 skipped, 3 steps" in text and "`one` × 1, `two` × 3" in text and "batch size 2" in text, text
    assert "batches of up to 2" in d.live_steps(data)


def test_start_asks_first_about_skipped_images_and_absurd_learning_rates(page, tmp_path, monkeypatch):
    h, n = page.handlers["training"], page.named
    started = []
    monkeypatch.setattr(page.jobs, "start", lambda config: started.append(config) or tmp_path / "run")
    root = make_dataset(tmp_path / "img", {"5_house": 4})
    make_zero_byte(root / "5_house" / "empty.png")
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(root)
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    data[page.fields["optimizer.optimizer"]] = "AdamW"
    data[page.fields["optimizer.learning_rate"]] = 1.0  # "0,0001" as a browser with a decimal comma sent it
    out = h.start(data)
    assert out[n["confirm_panel"]]["visible"] is True and started == []
    question = out[n["confirm_text"]]
    assert "1 image(s) would be skipped" in question
    assert "Learning rate is 1" in question and "AdamW" in question
    # Prodigy wants about 1.0: 1e-4 is the suspicious one there
    data[page.fields["optimizer.optimizer"]] = "Prodigy"
    data[page.fields["optimizer.learning_rate"]] = 1e-4
    assert "expects about 1.0" in h.start(data)[n["confirm_text"]] and started == []
    # Start anyway: started as it is, and the question goes away
    out = h.start_anyway(data)
    assert len(started) == 1 and started[0].optimizer.optimizer == "Prodigy" and out[n["confirm_panel"]]["visible"] is False


def test_the_cli_says_the_warnings_the_page_asks_about_in_either_language(page, tmp_path, monkeypatch, capsys):
    """Issue 25: the questions before Start come from the config and the dataset check, not from the GUI: `loratrainer
    train` prints the same ones (naming settings by path) and goes on; the Korean page asks them in Korean."""
    import copy

    from loratrainer.cli import main
    from loratrainer.gui.i18n import Translator
    from loratrainer.gui.tab_training import TrainingHandlers

    n = page.named
    monkeypatch.setattr(page.jobs, "start", lambda config: pytest.fail("started without asking"))
    root = make_dataset(tmp_path / "img", {"5_house": 3})
    make_zero_byte(root / "5_house" / "empty.png")
    data = form(page)
    values = {"folders.train_data_dir": str(root), "folders.output_dir": str(tmp_path / "model"), "optimizer.optimizer": "Lion",
              "optimizer.learning_rate": "1e-4", "optimizer.unet_lr": "0.01", "optimizer.text_encoder_lr": "",
              "optimizer.lr_scheduler": "constant", "optimizer.lr_warmup_steps": 20}
    for path, value in values.items():
        data[page.fields[path]] = value
    english = page.handlers["training"].start(data)[n["confirm_text"]]
    korean_page = copy.copy(page)
    korean_page.t = Translator("ko")
    korean = TrainingHandlers(korean_page).start(data)[n["confirm_text"]]
    # Lion's rates: the UNet's own 0.01 is far too high, the text encoder's (learning_rate, 1e-4) is fine
    assert "UNet learning rate is 0.01: far above what Lion usually takes (at most about 0.001)" in english, english
    assert "1 image(s) would be skipped" in english and "LR warm-up steps is ignored" in english
    assert "Learning rate is" not in english
    ko = Translator("ko")
    assert f"{ko.label('optimizer.unet_lr')} 값이 0.01입니다" in korean and "건너뜁니다" in korean and ko.label("optimizer.lr_warmup_steps") in korean
    assert "far above" not in korean, korean
    config = page.read_config(data)
    (tmp_path / "c.json").write_text(config.model_dump_json())
    assert main(["train", "--config", str(tmp_path / "c.json"), "--print-command"]) == 0  # said, not a refusal
    err = capsys.readouterr().err
    said = [line.removeprefix("warning: ") for line in err.splitlines() if line.startswith("warning: ")]
    assert said == [
        "1 image(s) would be skipped (damaged or too small); 3 would be used. The dataset check lists them.",
        "optimizer.unet_lr is 0.01: far above what Lion usually takes (at most about 0.001). Was a decimal comma typed (0,0001)?",
        "optimizer.lr_scheduler is constant, which has no warm-up: optimizer.lr_warmup_steps is ignored (choose constant_with_warmup).",
    ], err
    assert len(said) == english.count("\n- ") == korean.count("\n- ")  # the page asks the same three


def test_errors_name_the_labels_on_screen_as_sentences(page, tmp_path):
    """Refusals and form errors name settings as the page labels them, never by config key, and read as sentences."""
    h, n = page.handlers["training"], page.named
    root = make_dataset(tmp_path / "img", {"5_house": 2})
    write = tmp_path / "model"
    write.mkdir()
    (write / "house.safetensors").write_bytes(b"x")
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(root)
    data[page.fields["folders.output_dir"]] = str(write)
    data[page.fields["folders.output_name"]] = "house"
    data[page.fields["optimizer.optimizer"]] = "AdamW"
    message = h.start(data)[n["run_message"]]
    assert "Output name" in message and "If the output file exists" in message, message
    assert "output_name" not in message and "saving.existing_output" not in message
    # an emptied number box
    data[page.fields["network.network_alpha"]] = None
    message = h.start(data)[n["run_message"]]
    assert "Network alpha" in message and "enter a number" in message and "None" not in message, message
    # a dataset problem names the folder setting by its label
    data = form(page)
    data[page.fields["folders.output_dir"]] = str(write)
    message = h.start(data)[n["run_message"]]
    assert "Image folder" in message and "folders.train_data_dir" not in message, message
    assert re.search(r"\*\*Not started\.\*\* [A-Z]", message), message


def test_loading_a_kohya_config_keeps_the_page_folders_and_model_unless_it_sets_them(page, tmp_path):
    """Issue 22: a Kohya file with empty folders (as the Kohya GUI saves them) used to empty the page's image,
    output and log folders and put the model back to the hub id; now they are kept, and what the file set is said."""
    h = page.handlers["training"]
    images = str(make_dataset(tmp_path / "img", {"2_x": 2}))
    mine = {"folders.train_data_dir": images, "folders.output_dir": str(tmp_path / "model"), "folders.logging_dir": str(tmp_path / "log"),
            "model.pretrained_model_name_or_path": str(tmp_path / "my-model.safetensors"), "folders.output_name": "mine"}
    data = form(page, config_upload=None)
    for path, value in mine.items():
        data[page.fields[path]] = value
    kohya = {"LoRA_type": "Standard", "optimizer": "AdamW", "network_dim": 16, "train_data_dir": "", "output_dir": "", "logging_dir": "",
             "output_name": ""}  # no model: the import used to put back the hub id
    upload = tmp_path / "gradio" / "0123abcd" / "my kohya.json"
    upload.parent.mkdir(parents=True)
    upload.write_text(json.dumps(kohya))
    data[page.named["config_upload"]] = str(upload)
    out = h.load_file(data)
    values, message = by_path(page, out), out[page.named["config_message"]]
    assert values.get("network.network_dim") == 16, message
    assert {p: values[p] for p in mine} == mine
    assert "were kept" in message and "my kohya.json" in message and str(upload.parent) not in message
    # a file that names an output folder changes it, and says so by the box's label
    upload.write_text(json.dumps({**kohya, "output_dir": str(tmp_path / "elsewhere")}))
    out = h.load_file(data)
    values, message = by_path(page, out), out[page.named["config_message"]]
    assert values["folders.output_dir"] == str(tmp_path / "elsewhere") and values["folders.train_data_dir"] == images
    assert "The file set: Output folder" in message, message


def test_an_8bit_optimizer_without_cuda_is_refused_before_any_question(page, tmp_path, monkeypatch):
    """Issue 22: without a CUDA GPU, AdamW8bit (every shipped preset's) is refused at Start before "Start
    anyway?" is asked, and the page says so beforehand with a one-click plain AdamW."""
    from loratrainer.machine import eight_bit

    monkeypatch.setattr(eight_bit, "refusal", lambda name: eight_bit.unavailable_hint(name) if eight_bit.needs_bitsandbytes(name) else None)
    monkeypatch.setattr(eight_bit, "page_refusal", eight_bit.refusal)
    monkeypatch.setattr("loratrainer.launch.start.refusal", eight_bit.refusal)
    h, n = page.handlers["training"], page.named
    started = []
    monkeypatch.setattr(page.jobs, "start", lambda config: started.append(config) or tmp_path / "run")
    root = make_dataset(tmp_path / "img", {"5_house": 4})
    make_zero_byte(root / "5_house" / "empty.png")  # a question would be asked about it
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(root)
    data[page.fields["folders.output_dir"]] = str(tmp_path / "model")
    data[page.fields["optimizer.optimizer"]] = "AdamW8bit"
    out = h.start(data)
    assert out[n["confirm_panel"]]["visible"] is False and started == []
    assert "AdamW8bit needs bitsandbytes with a CUDA GPU; use AdamW" in out[n["run_message"]]
    note = h.optimizer_note("AdamW8bit")
    assert "no CUDA GPU" in note[n["optimizer_note"]] and note[n["optimizer_fix"]]["visible"] is True
    assert note[n["optimizer_fix"]]["value"] == "Use AdamW" and h.use_instead("AdamW8bit") == "AdamW"
    assert h.optimizer_note("AdamW")[n["optimizer_note"]] == ""


def test_learning_rate_boxes_read_a_decimal_comma_and_say_what_they_read(page):
    """Issue 22: "0,0001" (a comma-decimal locale) and " 1e-3 " are read as numbers, the box says what it read,
    and the schema gets a float; text that is no number is refused naming the box."""
    h = page.handlers["training"]
    data = form(page)
    data[page.fields["optimizer.learning_rate"]] = "0,0001"
    data[page.fields["optimizer.unet_lr"]] = " 1e-3 "
    data[page.fields["optimizer.text_encoder_lr"]] = ""
    config = page.read_config(data)
    assert config.optimizer.learning_rate == 0.0001 and config.optimizer.unet_lr == 0.001 and config.optimizer.text_encoder_lr is None
    assert "read as 0.0001" in h.rate_read("optimizer.learning_rate", "0,0001")["info"]
    assert "read as 0.001" in h.rate_read("optimizer.unet_lr", " 1e-3 ")["info"]
    assert "read as" not in h.rate_read("optimizer.learning_rate", "0.0001")["info"]
    assert "is not a number" in h.rate_read("optimizer.learning_rate", "fast")["info"]
    assert by_path(page, page.show_config(config))["optimizer.learning_rate"] == "0.0001"
    data[page.fields["optimizer.learning_rate"]] = "1,5,0"
    with pytest.raises(Exception) as info:
        page.read_config(data)
    assert "learning_rate" in str(info.value)


def test_path_check_explains_a_windows_path_as_start_does(page):
    """Issue 22: the inline check under a path box says what Start says about a Windows path, not "Not found"."""
    from loratrainer.gui.filebrowser import check_path
    from loratrainer.gui.i18n import Translator

    text = check_path("C:\\Users\\me\\lora\\image", "train", page.t)
    assert text == "✗ Image folder is a Windows path (C:\\Users\\me\\lora\\image), written on another computer: choose the file or folder on this one"
    assert "Not found" not in check_path("D:/models/sd15.safetensors", "model", page.t)
    assert "다른 컴퓨터" in check_path("C:\\Users\\me\\model", "output", Translator("ko"))


def test_prepare_source_box_is_not_called_image_folder(page):
    """Issue 22: Prepare's source box and the Image folder below it differed by one letter; in both languages."""
    from difflib import SequenceMatcher

    from loratrainer.gui.i18n import Translator

    for lang in ("en", "ko"):
        t = Translator(lang)
        source, image_folder = t("prepare.src"), t.label("folders.train_data_dir")
        assert SequenceMatcher(None, source, image_folder).ratio() < 0.6, (source, image_folder)


def test_prepare_says_which_files_it_left_out(page, tmp_path):
    """Issue 22: the Dataset tab's Prepare names a GIF it did not copy, and why, in the page's language."""
    h = page.handlers["dataset"]
    src = make_concept(tmp_path, "photos", 2, captions="a photo")
    (src / "party.gif").write_bytes(b"GIF89a")
    out = h.prepare(form(page, prep_src=str(src), prep_dest=str(tmp_path / "project"), prep_name="cat", prep_repeats=5, prep_reg=""))
    message = out[page.named["prep_message"]]
    assert "Not copied (1):" in message and "`party.gif`: an animation (GIF)" in message, message


def test_dataset_check_is_not_ready_when_images_are_skipped_and_names_tiny_ones(page, tmp_path):
    """Issue 22: "Ready to train" was said with 14 of 18 images skipped. Now the head says how many are usable
    and why the rest are skipped (the counts agree with the summary line), and a far-too-small image is named."""
    h = page.handlers["dataset"]
    root = make_dataset(tmp_path / "img", {"5_house": 2})
    for i in range(3):
        make_zero_byte(root / "5_house" / f"broken {i}.png")
    make_image(root / "5_house" / "tiny.png", (64, 64))
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(root)
    data[page.fields["buckets.max_resolution"]] = "512,512"
    out = h.check(data)
    summary = out[page.named["check_summary"]]
    assert "Ready to train" not in summary, summary
    assert "3 of 6 image(s) usable: 3 will be skipped" in summary and "3 cannot be read" in summary, summary
    assert "3 usable image(s)" in summary and "3 skipped" in summary  # the counts line agrees
    problems = {row[1]: row[2] for row in out[page.named["problems"]]}
    tiny = [text for where, text in problems.items() if where.endswith("tiny.png")]
    assert tiny and "far smaller than the training resolution 512x512" in tiny[0], problems


def test_bucket_warning_says_what_the_bucket_preview_shows(page, tmp_path):
    """Issue 22: a resolution that is no multiple of the bucket step was said to be "cropped to the nearest
    bucket" while the preview listed that bucket; now the warning names the size images train at, as listed."""
    h = page.handlers["dataset"]
    root = tmp_path / "img"
    make_image(root / "2_x" / "a.png", (512, 512))
    data = form(page)
    data[page.fields["folders.train_data_dir"]] = str(root)
    data[page.fields["buckets.max_resolution"]] = "500,500"
    out = h.check(data)
    warning = [row[2] for row in out[page.named["problems"]] if "not a multiple" in row[2]]
    assert len(warning) == 1 and "cropped to the nearest bucket" not in warning[0], warning
    assert "448x448" in warning[0] and "Max resolution" in warning[0] and "512,512" in warning[0], warning
    assert [row[0] for row in out[page.named["buckets"]]] == ["448x448"]  # what the preview lists
