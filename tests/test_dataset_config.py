"""Kohya's dataset config (sd-scripts' .toml, issue 23): read as library/config_util.py reads it, checked,
counted and trained from; what we do not train is refused by key (loratrainer/data/dataset_config.py)."""

from __future__ import annotations

from tests.test_train_support import tiny_model  # noqa: F401  (first: hides a broken torchvision)

import shutil
from pathlib import Path

import pytest

from loratrainer.config import TrainingConfig
from loratrainer.data.check import check_dataset
from loratrainer.data.dataset_config import read_dataset_config, with_dataset_config
from loratrainer.data.steps import count_steps, epoch_batches
from loratrainer.errors import UserError
from tests import datasets as ds

FIXTURES = Path(__file__).parent / "fixtures"
SD_SCRIPTS = FIXTURES / "sd_scripts" / "config_README"
KOHYA = FIXTURES / "kohya_ss" / "test" / "config"


def _config(toml: Path, **values) -> TrainingConfig:
    config = TrainingConfig()
    config.folders.dataset_config = str(toml)
    for dotted, value in values.items():
        group, name = dotted.split(".")
        setattr(getattr(config, group), name, value)
    return config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _refusal(path: Path, config: TrainingConfig | None = None) -> UserError:
    with pytest.raises(UserError) as info:
        read_dataset_config(path, config or TrainingConfig())
    return info.value


def _two_subsets(tmp_path: Path) -> Path:
    """sd-scripts' README layout: [general] -> [[datasets]] -> [[datasets.subsets]], one of them regularisation."""
    ds.make_dataset(tmp_path / "data", {"hoge": 3, "fuga": [(64, 64), (128, 64)], "reg": 10}, captions=False)
    ds.make_caption(tmp_path / "data" / "hoge" / "img_000.png", "a hoge girl, smiling")
    return _write(tmp_path, """
[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1

[[datasets]]
resolution = 128
batch_size = 2
min_bucket_reso = 64
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = 'data/hoge'
  class_tokens = 'hoge girl'
  num_repeats = 4

  [[datasets.subsets]]
  image_dir = 'data/fuga'
  class_tokens = 'fuga boy'

  [[datasets.subsets]]
  is_reg = true
  image_dir = 'data/reg'
  class_tokens = 'human'
""")


def test_values_are_inherited_general_dataset_subset_and_trained_for_the_run(tmp_path):
    plan = read_dataset_config(_two_subsets(tmp_path), TrainingConfig())
    hoge, fuga, reg = plan.subsets
    assert (hoge.num_repeats, fuga.num_repeats, reg.num_repeats) == (4, 1, 1)  # num_repeats defaults to 1
    assert hoge.caption_extension == fuga.caption_extension == ".txt"  # from [general]
    assert (hoge.class_tokens, reg.is_reg, hoge.is_reg) == ("hoge girl", True, False)
    assert hoge.image_dir == tmp_path / "data" / "hoge"  # relative to the .toml's folder
    # the dataset's keep_tokens (2) wins over [general]'s (1); shuffle from [general]; the rest are our settings
    config = with_dataset_config(_config(tmp_path / "dataset.toml"))
    assert config.dataset.keep_tokens == 2 and config.dataset.shuffle_caption
    assert config.training.train_batch_size == 2 and config.buckets.max_resolution == "128,128"
    assert config.buckets.min_bucket_reso == 64 and config.buckets.enable_bucket == TrainingConfig().buckets.enable_bucket


def test_the_check_counts_the_subsets_with_their_repeats_and_captions(tmp_path):
    config = _config(_two_subsets(tmp_path))
    config.folders.train_data_dir = str(tmp_path / "elsewhere")  # ignored, as sd-scripts ignores it
    report = check_dataset(config)
    data = report.to_json()
    assert report.ok, data["problems"]
    assert data["images"] == 5 and data["reg_images"] == 10
    concepts = {Path(c["path"]).name: (c["repeats"], c["is_reg"], c["images"]) for c in data["concepts"]}
    assert concepts == {"hoge": (4, False, 3), "fuga": (1, False, 2), "reg": (1, True, 10)}
    # 3 x 4 + 2 x 1 = 14 training samples, balanced by 10 reg images (one extra repeat for 4 of them)
    assert data["train_samples_per_epoch"] == 14 and data["reg_samples_per_epoch"] == 14
    assert data["batch_size"] == 2  # the dataset's batch_size, not ours (1)
    # buckets 64x64 (12 + 1 + 14 = 27 -> 14 batches) and 128x64 (1 -> 1 batch)
    assert data["buckets"] == {"64x64": 27, "128x64": 1} and data["steps_per_epoch"] == 15
    captions = {s.image_path.name: s.caption for s in report.samples if s.concept_dir.name == "hoge"}
    assert captions == {"img_000.png": "a hoge girl, smiling", "img_001.png": "hoge girl", "img_002.png": "hoge girl"}
    assert any(p.code == "dataset_config.ignored_folders" for p in report.problems)


def test_several_datasets_are_batched_and_balanced_each_on_its_own_as_sd_scripts(tmp_path):
    ds.make_dataset(tmp_path / "data", {"a": 3, "b": 3, "reg": 10})
    path = _write(tmp_path, """
[general]
resolution = 64
min_bucket_reso = 64
batch_size = 2
[[datasets]]
  [[datasets.subsets]]
  image_dir = 'data/a'
[[datasets]]
  [[datasets.subsets]]
  image_dir = 'data/b'
  [[datasets.subsets]]
  image_dir = 'data/reg'
  is_reg = true
""")
    report = check_dataset(_config(path))
    assert report.ok, report.format_text()
    # one 64x64 bucket: merged it would be ceil(9 / 2) = 5 batches; per dataset ceil(3 / 2) + ceil(6 / 2) = 5 ...
    # and the reg images balance dataset 2's 3 samples only (3 reg samples, not 6)
    assert report.steps.reg_samples_per_epoch == 3 and report.steps.train_samples_per_epoch == 6
    assert report.steps.batches_per_epoch == 2 + 3
    batches = epoch_batches(report.samples, 2, seed=1, epoch=1)
    assert len(batches) == report.steps.batches_per_epoch
    assert all(len({s.group for s in b}) == 1 for b in batches)  # no batch mixes two datasets
    # without the reg subset: 2 + 2 batches where one merged dataset would have ceil(6 / 2) = 3
    train_only = [s for s in report.samples if not s.is_reg]
    assert count_steps(train_only, 2).batches_per_epoch == 4 == len(epoch_batches(train_only, 2, 1, 1))


@pytest.mark.parametrize("text, code, named", [
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nmetadata_file = 'm.json'\n", "dataset_config.fine_tuning", "[[datasets.subsets]] 1"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nconditioning_data_dir = 'm'\n", "dataset_config.controlnet", "conditioning_data_dir"),
    ("[general]\nvalidation_split = 0.1\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\n", "dataset_config.validation", "validation_split"),
    ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'x'\n[[datasets]]\nresolution = [768, 768]\n[[datasets.subsets]]\nimage_dir = 'x'\n",
     "dataset_config.differs", "resolution"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nflip_aug = true\n[[datasets.subsets]]\nimage_dir = 'y'\n", "dataset_config.differs", "flip_aug"),
    ("[[datasets]]\nbatch_size = 4\n[[datasets.subsets]]\nimage_dir = 'x'\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'y'\n", "dataset_config.differs", "batch_size"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nkeep_tokens_separator = '|||'\n", "dataset_config.unsupported", "keep_tokens_separator"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nnum_repeats = '10'\n", "dataset_config.bad_type", "num_repeats"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nnum_repeat = 10\n", "dataset_config.unknown_key", "num_repeat"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nbatch_size = 2\n", "dataset_config.unknown_key", "batch_size"),  # a dataset key in a subset
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nnum_repeats = 0\n", "dataset_config.zero_repeats", "num_repeats"),
    ("[[datasets]]\n[[datasets.subsets]]\nclass_tokens = 'x'\n", "dataset_config.no_image_dir", "image_dir"),
    ("[datasets]\nimage_dir = 'x'\n", "dataset_config.bad_type", "datasets"),
    ("[general]\nresolution = 512\n", "dataset_config.no_datasets", "[[datasets]]"),
    ("[train]\nx = 1\n", "dataset_config.top_level", "train"),
    ("[[datasets]]\n[[datasets.subsets]\n", "dataset_config.unreadable", "TOML"),
])
def test_what_we_do_not_train_is_refused_by_key_in_one_sentence(tmp_path, text, code, named):
    error = _refusal(_write(tmp_path, text))
    assert error.code == code and named in str(error.reason)
    assert "\n" not in str(error.reason) and error.path == tmp_path / "dataset.toml"


def test_unsupported_keys_at_their_sd_scripts_default_are_accepted(tmp_path):
    plan = read_dataset_config(_write(tmp_path, """
[general]
cache_info = false
keep_tokens_separator = ''
caption_separator = ','
network_multiplier = 1.0
validation_split = 0.0
[[datasets]]
  [[datasets.subsets]]
  image_dir = 'x'
  alpha_mask = false
"""), TrainingConfig())
    assert [s.image_dir.name for s in plan.subsets] == ["x"]


def test_a_bad_file_is_one_error_in_the_check_naming_the_file(tmp_path):
    path = _write(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nmetadata_file = 'm.json'\n")
    report = check_dataset(_config(path))
    assert not report.ok and [p.code for p in report.problems] == ["dataset_config.fine_tuning"]
    assert report.problems[0].path == str(path)
    missing = check_dataset(_config(_write(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'nothing here'\n")))
    assert [p.code for p in missing.problems if p.severity == "error"] == ["dataset_config.no_folder"]


def test_a_value_our_settings_refuse_names_the_key(tmp_path):
    path = _write(tmp_path, "[[datasets]]\nbatch_size = 0\n[[datasets.subsets]]\nimage_dir = 'x'\n")
    with pytest.raises(UserError) as info:
        with_dataset_config(_config(path))
    assert info.value.code == "dataset_config.bad_value" and "batch_size" in str(info.value.reason)


# -- real files ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, code, named", [
    # sd-scripts docs/config_README-en (.md)
    ("example.toml", "dataset_config.fine_tuning", "[[datasets]] 2, [[datasets.subsets]] 1"),
    ("duplicate-subsets.toml", "dataset_config.differs", "resolution"),
    ("secondary-separator.toml", "dataset_config.unsupported", "keep_tokens_separator"),
])
def test_sd_scripts_readme_examples(name, code, named):
    error = _refusal(SD_SCRIPTS / name)
    assert error.code == code and named in str(error.reason)


@pytest.mark.parametrize("name, code, named", [
    ("dataset-finetune.toml", "dataset_config.fine_tuning", "metadata_file"),
    ("dataset-masked_loss.toml", "dataset_config.controlnet", "conditioning_data_dir"),
    ("dataset-multires.toml", "dataset_config.unsupported", "keep_tokens_separator"),
])
def test_kohya_gui_test_tomls_we_refuse(name, code, named):
    error = _refusal(KOHYA / name)
    assert error.code == code and named in str(error.reason)


def test_kohya_gui_dataset_toml_trains_from_its_folder_layout(tmp_path):
    """test/config/dataset.toml (named by the Kohya GUI's *-toml.json test configs): image_dir is relative; we read
    it from the .toml's folder, so the file placed beside its images checks as sd-scripts would train it."""
    plan = read_dataset_config(KOHYA / "dataset.toml", TrainingConfig())
    [subset] = plan.subsets
    assert (subset.num_repeats, subset.class_tokens, subset.caption_extension) == (10, "darius kawasaki person", ".txt")
    assert plan.settings == {
        "buckets.max_resolution": "512,512", "training.train_batch_size": 4, "buckets.enable_bucket": True,
        "buckets.min_bucket_reso": 64, "buckets.max_bucket_reso": 1024, "buckets.bucket_reso_steps": 64,
        "buckets.bucket_no_upscale": True, "dataset.keep_tokens": 1, "dataset.shuffle_caption": False,
        "dataset.flip_aug": False, "dataset.random_crop": False, "dataset.color_aug": False,
        "dataset.caption_dropout_rate": 0.0, "dataset.caption_dropout_every_n_epochs": 0, "dataset.caption_tag_dropout_rate": 0.0,
    }
    shutil.copy(KOHYA / "dataset.toml", tmp_path / "dataset.toml")
    ds.make_dataset(tmp_path / "test" / "img", {"10_darius kawasaki person": [(512, 512)] * 3}, captions=False)
    report = check_dataset(_config(tmp_path / "dataset.toml"))
    assert report.ok, report.format_text()
    assert report.steps.train_samples_per_epoch == 30 and report.steps.batch_size == 4 and report.steps.steps_per_epoch == 8
    assert {s.caption for s in report.samples} == {"darius kawasaki person"}  # no .txt files: the class tokens


TOML_JSONS = sorted(p.name for p in KOHYA.glob("*-toml.json"))
IMPORTED_TOML_JSONS = ["LoKR-AdamW8bit-toml.json", "locon-AdamW8bit-masked_loss-toml.json", "locon-AdamW8bit-toml.json"]


def test_every_toml_a_kohya_gui_test_config_names_is_a_fixture_with_its_outcome():
    import json

    named = {Path(json.loads((KOHYA / n).read_text(encoding="utf-8"))["dataset_config"]).name for n in TOML_JSONS}
    assert len(TOML_JSONS) == 9 and named == {"dataset.toml", "dataset-masked_loss.toml", "dataset-finetune.toml"}
    assert all((KOHYA / name).is_file() for name in named)  # outcomes: the tests above


@pytest.mark.parametrize("json_name", IMPORTED_TOML_JSONS)
def test_kohya_gui_toml_configs_import_and_export_the_dataset_config_key(json_name):
    """The Kohya GUI LoRA test configs that name a TOML (the others are refused for their tab or network kind,
    tests/test_kohya.py): the key is our setting now, not "not supported", and is written back on export."""
    import json

    from loratrainer.config.kohya import export_kohya, import_kohya

    data = json.loads((KOHYA / json_name).read_text(encoding="utf-8"))
    config, report = import_kohya(data, json_name)
    assert config.folders.dataset_config == data["dataset_config"] and "dataset_config" not in report.keys("unsupported")
    assert export_kohya(config)[0]["dataset_config"] == data["dataset_config"]


# -- a real run ----------------------------------------------------------------------------------------------

def test_a_tiny_run_from_a_toml_trains_both_subsets_with_their_repeats(tmp_path, tiny_model, monkeypatch):
    import json

    from accelerate import Accelerator

    from loratrainer.train.entry import train_run
    from loratrainer.train.run_context import RunContext
    from tests.test_train_support import small_config

    ds.make_dataset(tmp_path / "data", {"one": 2, "two": 1}, captions=False)
    toml = _write(tmp_path, """
[general]
resolution = 64
min_bucket_reso = 64
batch_size = 2
caption_extension = '.txt'
[[datasets]]
  [[datasets.subsets]]
  image_dir = 'data/one'
  num_repeats = 1
  class_tokens = 'one thing'
  [[datasets.subsets]]
  image_dir = 'data/two'
  num_repeats = 3
  class_tokens = 'two thing'
""")
    config = small_config(tmp_path, tiny_model, epoch=1, train_batch_size=1, text_encoder_lr=0)
    config.folders.dataset_config = str(toml)
    monkeypatch.setenv("LORATRAINER_TRACE_BATCHES", "1")
    (tmp_path / "run").mkdir()
    outcome = train_run(config, RunContext(tmp_path / "run"), Accelerator(cpu=True))
    # 2 x 1 + 1 x 3 = 5 samples in one 64x64 bucket at the TOML's batch size 2: 3 steps (not 5 at our batch size 1)
    assert outcome.status == "finished" and outcome.step == 3
    lines = [json.loads(line) for line in (tmp_path / "run" / "batches-rank-0.jsonl").read_text().splitlines()]
    trained = [Path(p) for line in lines for p in line["images"]]
    assert [len(line["images"]) for line in lines].count(2) == 2
    per_subset = {name: sum(1 for p in trained if p.parent.name == name) for name in ("one", "two")}
    assert per_subset == {"one": 2, "two": 3}
    assert {p.name for p in trained if p.parent.name == "two"} == {"img_000.png"}


def test_a_refusal_reads_in_korean_with_no_english_left(tmp_path):
    from loratrainer.gui.i18n import Translator

    error = _refusal(_write(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nflip_aug = 'yes'\n"))
    assert str(error.reason) == "`flip_aug` in [[datasets]] 1, [[datasets.subsets]] 1 must be true or false, not 'yes'"
    korean = Translator("ko").message(error.msg)
    assert "true 또는 false" in korean and "must" not in korean and "flip_aug" in korean, korean
