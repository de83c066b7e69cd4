"""Sample images during training: Kohya's prompt syntax, its sampler names, when samples are due, the files
and events a run writes, and the proof that sampling leaves training untouched (same LoRA with or without)."""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import json
import random
import re
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image

from loratrainer.config import Sampler
from loratrainer.errors import UserError
from loratrainer.run.events import EventWriter
from loratrainer.run.files import EVENTS_FILE, sample_name
from loratrainer.model.loading import noise_scheduler
from loratrainer.config.sample_prompts import SamplePrompt, SamplePromptError, load_prompts, parse_line, parse_prompts
from loratrainer.config.samplers import SAMPLER_NAMES
from loratrainer.train.samplers import build_scheduler
from loratrainer.config import SamplingSettings
from loratrainer.train.sampling import maybe_sample, sample_due
from loratrainer.train.saving import Saver
from loratrainer.train.setup import build_trainer

# -- prompt parsing --------------------------------------------------------------------------------------------

P = SamplePrompt


@pytest.mark.parametrize("line, expected", [
    ("a cat", P("a cat")),
    ("modern concrete house, dusk --n blurry, lowres --w 512 --h 768 --s 28 --l 7 --d 42 --ss k_euler_a",
     P("modern concrete house, dusk", "blurry, lowres", 512, 768, 28, 7.0, 42, "euler_a")),
    ("x --w 515 --h 100", P("x", width=512, height=96)),  # rounded down to a multiple of 8
    ("x --w 30 --h 8", P("x", width=64, height=64)),  # at least 64, as sd-scripts
    ("x --s 0", P("x", steps=1)),
    ("x --s 5000", P("x", steps=1000)),
    ("x --l 4.5 --d 0", P("x", cfg_scale=4.5, seed=0)),
    ("x --W 256 --SS DDIM", P("x", width=256, sampler="ddim")),  # option names in any case
    ("x --d 1 --d 2", P("x", seed=2)),  # the last one wins
    ("x --ss dpmsolver++ --n  spaced  out ", P("x", negative_prompt="spaced  out", sampler="dpmsolver++")),
    ("--w 64", P("", width=64)),  # no text: an unconditional sample
    ("a--b c --s 3", P("a--b c", steps=3)),  # '--' inside a word is text
])
def test_prompt_line(line, expected):
    assert parse_line(line, 1) == P(**{**expected.__dict__, "line": 1})


@pytest.mark.parametrize("line, words", [
    ("x --w abc", ["--w", "width", "whole number", "'abc'"]),
    ("x --h 9000", ["--h", "8192"]),
    ("x --w -8", ["--w", "between 1"]),
    ("x --s ten", ["--s", "steps"]),
    ("x --l -1", ["--l", "CFG", "0 or more"]),
    ("x --l nan", ["--l", "CFG"]),
    ("x --l 7,5", ["--l", "7.5"]),
    ("x --d -5", ["--d", "seed", "between 0"]),
    ("x --d 1.5", ["--d", "seed"]),
    ("x --ss warp_drive", ["--ss", "warp_drive", "euler_a"]),
    ("x --zz 1", ["unknown option --zz", "--n", "--ss"]),
    ("x --n", ["--n needs a value"]),
    ("x --w", ["--w needs a value"]),
])
def test_bad_values_name_the_line_and_the_option(line, words):
    text = "# my prompts\n\nfine --w 64\n" + line
    with pytest.raises(SamplePromptError) as info:
        parse_prompts(text)
    assert info.value.line == 4 and "line 4" in str(info.value) and isinstance(info.value, UserError)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_comments_blank_lines_bom_and_windows_newlines():
    text = "\ufeff# comment\r\n\r\n  a cat --d 1\r\n   # indented comment\r\nb dog\r\n\r\n"
    assert parse_prompts(text) == [P("a cat", seed=1, line=3), P("b dog", line=5)]
    assert parse_prompts("") == [] and parse_prompts("# only\n\n") == []


def test_a_prompt_file_path_is_read_and_named_in_errors(tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("# from Kohya\nhouse --w 640\n", encoding="utf-8")
    assert load_prompts(str(file)) == [P("house", width=640, line=2)]
    assert load_prompts(f"  {file}  \n") == [P("house", width=640, line=2)]
    file.write_text("house --w big\n", encoding="utf-8")
    with pytest.raises(SamplePromptError, match=re.escape(f"{file}, line 1: --w")):
        load_prompts(str(file))
    assert load_prompts("just text") == [P("just text", line=1)]  # not a file: the prompt itself
    with pytest.raises(SamplePromptError, match="prompt file .*gone.txt does not exist"):
        load_prompts(str(tmp_path / "gone.txt"))  # a Kohya config's path missing here: not a prompt "…/gone.txt"


# -- samplers ----------------------------------------------------------------------------------------------------

EXPECTED_SCHEDULERS = {
    "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler", "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler", "heun": "HeunDiscreteScheduler", "dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_a": "KDPM2AncestralDiscreteScheduler", "dpmsolver": "DPMSolverMultistepScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler", "dpmsingle": "DPMSolverSinglestepScheduler",
    "k_lms": "LMSDiscreteScheduler", "k_euler": "EulerDiscreteScheduler", "k_euler_a": "EulerAncestralDiscreteScheduler",
    "k_dpm_2": "KDPM2DiscreteScheduler", "k_dpm_2_a": "KDPM2AncestralDiscreteScheduler",
}


def test_every_kohya_sampler_name_is_known_to_the_schema_and_here():
    assert set(SAMPLER_NAMES) == set(get_args(Sampler)) == set(EXPECTED_SCHEDULERS)


def _has_scipy() -> bool:
    try:
        import scipy  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(EXPECTED_SCHEDULERS))
def test_sampler_builds_its_scheduler_from_the_training_schedule(name):
    training = noise_scheduler(v_prediction=True)
    if EXPECTED_SCHEDULERS[name] == "LMSDiscreteScheduler" and not _has_scipy():
        with pytest.raises(UserError, match="scipy"):
            build_scheduler(name, training.config)
        return
    scheduler = build_scheduler(name, training.config)
    assert type(scheduler).__name__ == EXPECTED_SCHEDULERS[name]
    assert scheduler.config.prediction_type == "v_prediction"  # a v-model is sampled as one
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.num_train_timesteps == 1000
    assert scheduler is not training
    if name.startswith("dpmsolver"):
        assert scheduler.config.algorithm_type == name
    scheduler.set_timesteps(2)
    assert len(scheduler.timesteps) >= 2


# -- when, and under which name ----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, call, due", [
    (SamplingSettings(sample_every_n_steps=2), dict(step=2, epoch=1), True),
    (SamplingSettings(sample_every_n_steps=2), dict(step=3, epoch=1), False),
    (SamplingSettings(sample_every_n_steps=2), dict(step=4, epoch=1, epoch_end=True), False),  # steps: not at epoch ends
    (SamplingSettings(sample_every_n_steps=1, sample_every_n_epochs=2), dict(step=4, epoch=1), False),  # epochs win over steps
    (SamplingSettings(sample_every_n_steps=1, sample_every_n_epochs=2), dict(step=4, epoch=1, epoch_end=True), False),
    (SamplingSettings(sample_every_n_steps=1, sample_every_n_epochs=2), dict(step=8, epoch=2, epoch_end=True), True),
    (SamplingSettings(sample_at_first=True), dict(step=0, epoch=0, first=True), True),
    (SamplingSettings(sample_at_first=True), dict(step=500, epoch=3, first=True), False),  # resumed past step 0
    (SamplingSettings(sample_every_n_steps=1), dict(step=0, epoch=0, first=True), False),
    (SamplingSettings(sample_at_first=True), dict(step=2, epoch=1), False),
])
def test_when_a_sample_is_due(schedule, call, due):
    assert sample_due(schedule, **call) is due


def test_kohya_file_names():
    assert sample_name("dog", 500, 3, 1, "20240102030405", 42, by_epoch=False) == "dog_000500_01_20240102030405_42.png"
    assert sample_name("dog", 500, 3, 12, "20240102030405", 7, by_epoch=True) == "dog_e000003_12_20240102030405_7.png"


# -- in a run ------------------------------------------------------------------------------------------------------


class _Board:
    def __init__(self):
        self.images = []

    def add_image(self, tag, image, step, dataformats):
        self.images.append((tag, image.shape, step, dataformats))

    def flush(self):
        pass


class _Quiet:
    def step(self, step, epoch, loss, lr):
        pass

    def epoch_end(self, epoch, step):
        pass


PROMPTS = "# samples\nred square --w 64 --h 64 --s 2 --d 5\n\nblue circle --n green --w 128 --h 64 --s 2 --l 3 --ss ddim\n"
NAME = re.compile(r"^lora_(e\d{6}|\d{6})_(\d{2})_(\d{14})_(\d+)\.png$")


def _trainer(root, model, **values):
    set_seed(7)  # the LoRA's initial weights come from the global RNG
    config = small_config(root, model, images=2, output_name="lora", sample_prompts=PROMPTS, **values)  # 2 x 2 steps
    t = build_trainer(config, root, Accelerator(cpu=True), seed=7)
    t.saver = Saver(t, write=lambda path, p: None)
    t.run.events = EventWriter(root / EVENTS_FILE)  # what the entry point gives a run: samples are announced there
    return t


def _train(t):
    from loratrainer.train.loop import train

    set_seed(7)
    outcome = train(t, _Quiet())
    assert outcome.status == "finished"
    return {n: p.detach().clone() for m in (t.handle.unet, t.handle.text_encoder) for n, p in m.named_parameters() if "lora_" in n}


def _samples(root):
    return sorted((root / "out" / "sample").glob("*.png"))


def test_sampling_writes_kohya_files_and_events_and_leaves_training_untouched(tmp_path, tiny_model):
    plain = _train(_trainer(tmp_path / "plain", tiny_model, network_dropout=0.1))  # dropout: modes and RNG matter

    t = _trainer(tmp_path / "steps", tiny_model, sample_every_n_steps=2, sample_at_first=True, network_dropout=0.1)
    t.run.tensorboard = board = _Board()
    sampled = _train(t)
    assert t.total_steps == 4
    files = _samples(tmp_path / "steps")
    names = [NAME.match(f.name) for f in files]
    assert all(names) and len(files) == 6  # before step 1, after steps 2 and 4; two prompts each
    assert sorted((m.group(1), m.group(2)) for m in names) == [(f"{s:06d}", f"{i:02d}") for s in (0, 2, 4) for i in (0, 1)]
    seeds = {m.group(2): m.group(4) for m in names}
    assert seeds["00"] == "5" and len({m.group(4) for m in names if m.group(2) == "01"}) == 1  # a random seed, kept
    for f, m in zip(files, names):
        assert Image.open(f).size == ((64, 64) if m.group(2) == "00" else (128, 64))
    stream = [json.loads(line) for line in (tmp_path / "steps" / "events.jsonl").read_text().splitlines()]
    assert {e["event"] for e in stream} == {"sample", "checkpoint", "phase"}  # the run's one stream: the saver's files, the phases too
    events = [e for e in stream if e["event"] == "sample"]
    assert sorted(e["path"] for e in events) == [str(f) for f in files]
    assert {(e["step"], e["index"], e["prompt"]) for e in events} == {
        (s, i, p) for s in (0, 2, 4) for i, p in enumerate(["red square", "blue circle"])}
    assert all(e["event"] == "sample" and "epoch" in e and "time" in e for e in events)
    assert len(board.images) == 6 and board.images[1] == ("sample/01", (64, 128, 3), 0, "HWC")

    assert plain.keys() == sampled.keys() and plain
    assert all(torch.equal(plain[k], sampled[k]) for k in plain), "sampling changed the training"

    t = _trainer(tmp_path / "epochs", tiny_model, sample_every_n_steps=1, sample_every_n_epochs=1, network_dropout=0.1)
    assert all(torch.equal(plain[k], v) for k, v in _train(t).items())
    assert sorted(NAME.match(f.name).group(1) for f in _samples(tmp_path / "epochs")) == ["e000001"] * 2 + ["e000002"] * 2


def test_a_sample_restores_rng_modes_and_grad_flags(tmp_path, tiny_model):
    # clip skip 2 and 150-token prompts: samples see text as training does (two 75-token chunks, penultimate layer)
    t = _trainer(tmp_path, tiny_model, sample_at_first=True, network_dropout=0.5, clip_skip=2, max_token_length=150)
    unet = t.accelerator.unwrap_model(t.unet)
    unet.train()
    unet.conv_in.eval()  # a mixed state, restored module by module
    t.text_encoder.requires_grad_(False)
    frozen = next(t.text_encoder.parameters())
    frozen.requires_grad_(True)  # an odd flag, restored as it was
    modes = [m.training for m in unet.modules()]
    flags = [p.requires_grad for p in t.text_encoder.parameters()]
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state())

    paths = maybe_sample(t, first=True)

    assert len(paths) == 2 and all(p.exists() for p in paths)
    assert [m.training for m in unet.modules()] == modes and [p.requires_grad for p in t.text_encoder.parameters()] == flags
    assert random.getstate() == before[0] and (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.random.get_rng_state(), before[2])
    again = maybe_sample(t, first=True)
    assert [np.asarray(Image.open(p)).tobytes() for p in paths] == [np.asarray(Image.open(p)).tobytes() for p in again]
    (Path(t.run_dir) / "STOP").write_text("")  # a stop asked during a round skips the rest of it
    assert maybe_sample(t, first=True) == []


def test_bad_prompts_stop_the_run_before_training_and_no_prompts_means_no_samples(tmp_path, tiny_model, caplog):
    t = _trainer(tmp_path / "bad", tiny_model, sample_every_n_steps=100)
    t.config.sampling.sample_prompts = "ok\nbad --s many"
    with pytest.raises(SamplePromptError, match="line 2"):
        maybe_sample(t, first=True)
    t = _trainer(tmp_path / "none", tiny_model, sample_every_n_steps=1)
    t.config.sampling.sample_prompts = "# nothing\n"
    t.step = 1
    assert maybe_sample(t) == [] and "no prompt" in caplog.text


@pytest.mark.slow
def test_two_processes_through_accelerate_launch_sample_once_on_the_main_process(tmp_path, tiny_model):
    from loratrainer.run import events
    from loratrainer.run import files as run_files
    from loratrainer.launch.start import start_run

    config = small_config(tmp_path, tiny_model, images=4, repeats=2, num_processes=2, main_process_port=29747, epoch=1,
                          output_name="lora", sample_prompts="red square --w 64 --h 64 --s 2", sample_every_n_steps=2,
                          sample_at_first=True)
    run = start_run(config)
    assert run.wait(timeout=300) == 0, "\n".join(p.read_text()[-3000:] for p in run.run_dir.glob("*.log"))
    evs = events.read_events(run.run_dir / run_files.EVENTS_FILE)[0]
    samples = [e for e in evs if e["event"] == "sample"]
    assert next(e for e in evs if e["event"] not in ("phase", "note"))["event"] == "started" and evs[-1]["event"] == "ended" and evs[-1]["step"] == 2
    assert [(e["step"], e["index"]) for e in samples] == [(0, 0), (2, 0)]  # each round once, not once per process
    assert sorted(NAME.match(f.name).group(1) for f in _samples(tmp_path)) == ["000000", "000002"]
    assert list((run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
