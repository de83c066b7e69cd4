"""SDXL training: the tiny SDXL (two text encoders, size conditioning, a v-pred variant) trains end to end through
the CLI; size/crop conditioning against sd-scripts' formula by hand; the text conditioning's shapes; per-encoder
rates; the text-encoder output cache and its refusals; zero terminal SNR as sd-scripts computes it."""

from __future__ import annotations

from tests.test_train_support import small_config  # noqa: F401  (first: hides a broken torchvision)

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import load_file

from loratrainer.run import events
from loratrainer.config import TrainingConfig, save_config, with_values
from loratrainer.errors import UserError
from loratrainer.run import files as run_files
from loratrainer.train.dataset import TrainDataset
from loratrainer.train.sdxl_text import encode_sdxl
from loratrainer.train.size_conditioning import crop_ltrb
from tests.tiny_sdxl import TEXT1_HIDDEN, TEXT2_HIDDEN, build_tiny_sdxl, save_tiny_sdxl_diffusers

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_PROMPT = "a red square --n blurry --w 64 --h 96 --s 2 --l 5 --d 7 --ss euler"


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    return save_tiny_sdxl_diffusers(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_sdxl):
    """One real run through `loratrainer train --config` (accelerate launch): UNet and both text encoders, flip,
    latents cached on disk, 2 epochs; shared by the assertions below."""
    root = tmp_path_factory.mktemp("sdxl-cli")
    config = small_config(root, tiny_sdxl, images=2, repeats=1, train_batch_size=1, flip_aug=True, cache_latents_to_disk=True,
                          text_encoder_lr=1e-3, text_encoder_2_lr=5e-4, unet_lr=1e-3, learning_rate=1e-3,
                          sample_every_n_epochs=2, sample_prompts=SAMPLE_PROMPT)
    save_config(config, root / "config.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LORATRAINER_PROGRESS_INTERVAL_S": "0"}
    proc = subprocess.run([sys.executable, "-m", "loratrainer", "train", "--config", str(root / "config.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run_dir,) = (root / "out" / "log").iterdir()
    return SimpleNamespace(root=root, config=config, run_dir=run_dir, lora=load_file(str(root / "out" / "last.safetensors")),
                           events=events.read_events(run_dir / run_files.EVENTS_FILE)[0])


def test_cli_sdxl_run_finishes_with_finite_loss(cli_run):
    evs = cli_run.events
    assert evs[-1]["event"] == "ended" and evs[-1]["status"] == "finished" and evs[-1]["step"] == 4
    losses = [e["loss"] for e in evs if e["event"] == "progress"]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_cli_sdxl_file_has_kohya_sdxl_names_and_the_lora_changed(cli_run):
    names = {k.split(".")[0] for k in cli_run.lora}
    prefixes = {n.split("_")[1] for n in names}
    assert prefixes == {"unet", "te1", "te2"}
    assert any(n.startswith("lora_unet_input_blocks_") for n in names) and any(n.startswith("lora_unet_output_blocks_") for n in names)
    assert not any(n.startswith("lora_unet_down_blocks") for n in names)  # sd-scripts' original-layout names
    ups = {part: [v for k, v in cli_run.lora.items() if k.startswith(f"lora_{part}_") and k.endswith("lora_up.weight")]
           for part in ("unet", "te1", "te2")}
    for part, tensors in ups.items():  # lora_up starts at zero: every part trained
        assert tensors and any(t.abs().max() > 0 for t in tensors), part


def test_cli_sdxl_file_says_sdxl_in_its_metadata(cli_run):
    from safetensors import safe_open

    with safe_open(str(cli_run.root / "out" / "last.safetensors"), "pt") as f:
        meta = f.metadata()
    # sd-scripts' sdxl_train_network.py values (library/sdxl_model_util.py, library/sai_model_spec.py)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_text_encoder_lr"] == "[0.001, 0.0005]"


def test_cli_sdxl_latent_cache_files_carry_size_conditioning(cli_run):
    files = sorted((cli_run.root / "image").rglob("*_sd.npz"))
    assert len(files) == 2
    for f in files:
        with np.load(f) as npz:
            assert {"latents", "latents_flipped", "original_size", "crop_ltrb"} <= set(npz.files)
            assert tuple(npz["original_size"]) == (64, 64) and tuple(npz["crop_ltrb"]) == (0, 0, 64, 64)


def test_cli_sdxl_samples_with_the_sdxl_pipeline_and_kohya_prompt_syntax(cli_run):
    samples = [e for e in cli_run.events if e["event"] == "sample"]
    assert [(e["epoch"], e["seed"], e["prompt"]) for e in samples] == [(2, 7, "a red square")]
    with Image.open(samples[0]["path"]) as image:
        assert image.size == (64, 96)  # --w 64 --h 96
    # (the SD1.5 pipeline cannot call this UNet at all: it needs the pooled text and time ids SDXL's pipeline adds)


# -- size and crop conditioning against sd-scripts' formula, by hand ------------------------------------------------


def _portrait_dataset(tmp_path: Path, **values):
    """One 200x300 (w x h) image in a 96x64 bucket, resized to 96x144 then cropped (a made-up sample, so the bucket
    is the one we want)."""
    path = tmp_path / "p.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(path)
    sample = SimpleNamespace(image_path=path, caption="x", is_reg=False, size=(200, 300), bucket=(96, 64), resized=(96, 144))
    config = with_values(TrainingConfig(), {"min_bucket_reso": 64, "cache_latents": False, **values})
    return TrainDataset([sample], config, seed=7, size_conditioning=True)


# By hand from BucketManager.get_crop_ltrb((96, 64), (200, 300)): the bucket (ar 1.5) is wider than the image
# (ar 2/3), so fit the height: resized w = 64 * 200/300 = 42.667, h = 64; left = (96 - 42.667) // 2 = 26.0, top = 0,
# right = 68.667. Unflipped: [orig_h, orig_w, top, left, target_h, target_w] = [300, 200, 0, 26, 64, 96]. Flipped:
# left = 96 - 68.667 = 27.333 -> int 27.
UNFLIPPED = [300, 200, 0, 26, 64, 96]
FLIPPED = [300, 200, 0, 27, 64, 96]


def test_crop_rectangle_is_sd_scripts_get_crop_ltrb():
    left, top, right, bottom = crop_ltrb((96, 64), (200, 300))
    assert (left, top, bottom) == (26.0, 0, 64) and right == pytest.approx(26 + 64 * 200 / 300)


def test_time_ids_of_a_flipped_image(tmp_path):
    plain = _portrait_dataset(tmp_path)[(0, 1, 0, 0, 0)]
    assert plain["time_ids"].tolist() == UNFLIPPED
    ds = _portrait_dataset(tmp_path, flip_aug=True)
    seen = set()
    for b in range(12):
        item = ds[(0, 1, b, 0, 0)]
        flipped = torch.equal(item["pixels"], plain["pixels"].flip(-1))
        assert flipped or torch.equal(item["pixels"], plain["pixels"])
        assert item["time_ids"].tolist() == (FLIPPED if flipped else UNFLIPPED)
        seen.add(flipped)
    assert seen == {True, False}


def test_time_ids_of_a_randomly_cropped_image_keep_sd_scripts_crop(tmp_path):
    ds = _portrait_dataset(tmp_path, random_crop=True)
    items = [ds[(0, 1, b, 0, 0)] for b in range(8)]
    assert len({bytes(it["pixels"].numpy()) for it in items}) > 1  # the crop moved
    # sd-scripts does not reflect a random crop in crop top-left (train_util.trim_and_resize_if_required)
    assert all(it["time_ids"].tolist() == UNFLIPPED for it in items)


def test_sd15_items_carry_no_time_ids(tmp_path):
    ds = _portrait_dataset(tmp_path)
    ds.size_conditioning = False
    assert "time_ids" not in ds[(0, 1, 0, 0, 0)]


# -- text conditioning -------------------------------------------------------------------------------------------


def test_sdxl_text_conditioning_shapes_and_pooled_from_the_first_chunk():
    m = build_tiny_sdxl()
    cpu = torch.device("cpu")
    long = " ".join(f"word{i}" for i in range(120))
    with torch.no_grad():
        h1, h2, pooled = encode_sdxl(m.text_encoder, m.text_encoder_2, m.tokenizer, m.tokenizer_2, ["a cat", long], 75, cpu)
        assert h1.shape == (2, 77, TEXT1_HIDDEN) and h2.shape == (2, 77, TEXT2_HIDDEN)
        assert pooled.shape == (2, m.text_encoder_2.config.projection_dim)
        # penultimate hidden states, not normed (sd-scripts: hidden_states[-2] of both)
        ids = m.tokenizer(["a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert torch.allclose(h1[:1], m.text_encoder(ids, output_hidden_states=True).hidden_states[-2], atol=1e-6)
        l1, l2, lpool = encode_sdxl(m.text_encoder, m.text_encoder_2, m.tokenizer, m.tokenizer_2, ["a cat", long], 150, cpu)
        assert l1.shape == (2, 152, TEXT1_HIDDEN) and l2.shape == (2, 152, TEXT2_HIDDEN) and lpool.shape == pooled.shape
        # a short caption: its first window is the 75-token encoding, so is its pooled output
        assert torch.allclose(lpool[0], pooled[0], atol=1e-5)
        # the pooled output is the projection at the first EOS of text_encoder_2 (sd-scripts' _pool_workaround)
        ids2 = m.tokenizer_2(["a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = m.text_encoder_2(ids2)
        eos = int((ids2[0] == m.tokenizer_2.eos_token_id).nonzero()[0])
        assert torch.allclose(pooled[0], m.text_encoder_2.text_projection(out.last_hidden_state[0, eos]), atol=1e-5)


def _sdxl_models(model: Path, **values):
    from loratrainer.train.setup import load_and_adapt_models

    config = with_values(TrainingConfig(), {"pretrained_model_name_or_path": str(model), "mixed_precision": "no", "min_bucket_reso": 64, **values})
    components, handle, _ = load_and_adapt_models(config, Accelerator(cpu=True))
    return components, handle, config


def test_each_text_encoder_gets_its_own_rate(tiny_sdxl):
    from loratrainer.train.family import family_for
    from loratrainer.train.setup import param_groups

    def lrs(**values):
        c, handle, config = _sdxl_models(tiny_sdxl, **values)
        groups = param_groups(handle, config, family_for(c))
        parts = {"unet": handle.unet_parameters(), "te1": handle.text_encoder_parameters(), "te2": handle.text_encoder_2_parameters()}
        return {part: g["lr"] for g in groups for part, ps in parts.items() if ps and g["params"][0] is ps[0]}

    assert lrs(unet_lr=1e-3, text_encoder_lr=2e-4) == {"unet": 1e-3, "te1": 2e-4, "te2": 2e-4}  # empty: the text encoder rate
    assert lrs(unet_lr=1e-3, text_encoder_lr=2e-4, text_encoder_2_lr=5e-5) == {"unet": 1e-3, "te1": 2e-4, "te2": 5e-5}
    assert lrs(unet_lr=1e-3, text_encoder_lr=2e-4, text_encoder_2_lr=0) == {"unet": 1e-3, "te1": 2e-4}  # 0: not trained


def test_text_encoder_output_cache_is_refused_when_it_cannot_hold(tmp_path):
    from loratrainer.train.text_cache import check_text_cache_allowed

    def config(**values):
        return with_values(TrainingConfig(), {"cache_text_encoder_outputs": True, "text_encoder_lr": 0, **values})

    check_text_cache_allowed(config())  # UNet only, static captions: fine
    with pytest.raises(UserError) as err:
        check_text_cache_allowed(config(text_encoder_lr=1e-4))
    assert err.value.code == "train.text_cache_needs_frozen_text_encoder" and "optimizer.text_encoder_lr" in str(err.value)
    with pytest.raises(UserError) as err:
        check_text_cache_allowed(config(text_encoder_2_lr=1e-4))
    assert err.value.code == "train.text_cache_needs_frozen_text_encoder"
    for setting, value in (("shuffle_caption", True), ("caption_dropout_rate", 0.1), ("caption_tag_dropout_rate", 0.1),
                           ("caption_dropout_every_n_epochs", 2)):
        with pytest.raises(UserError) as err:
            check_text_cache_allowed(config(**{setting: value}))
        assert err.value.code == "train.text_cache_needs_static_captions" and f"dataset.{setting}" in str(err.value)
    with pytest.raises(UserError):  # to disk implies caching (sd-scripts' verify_sdxl_training_args)
        check_text_cache_allowed(config(cache_text_encoder_outputs=False, cache_text_encoder_outputs_to_disk=True, shuffle_caption=True))


def _sd_scripts_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """sd-scripts' enforce_zero_terminal_snr (library/custom_train_functions.py), transcribed."""
    alphas_bar_sqrt = (1 - betas).cumprod(0).sqrt()
    a0, aT = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= aT
    alphas_bar_sqrt *= a0 / (a0 - aT)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def test_zero_terminal_snr_rescales_betas_as_sd_scripts():
    from loratrainer.model.loading import noise_scheduler
    from loratrainer.train.setup import zero_terminal_snr

    plain = noise_scheduler(v_prediction=True)
    fixed = zero_terminal_snr(plain)
    assert torch.allclose(fixed.betas, _sd_scripts_zero_terminal_snr(plain.betas.clone()), atol=1e-6)
    assert float(fixed.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-9) and float(plain.alphas_cumprod[-1]) > 1e-3
    assert fixed.config.prediction_type == "v_prediction"


# -- a v-pred tiny SDXL, UNet only, text-encoder outputs cached on disk, zero terminal SNR (in process) --------------


@pytest.fixture(scope="module")
def vpred_run(tmp_path_factory):
    from loratrainer.train.entry import train_run
    from loratrainer.train.run_context import RunContext

    root = tmp_path_factory.mktemp("sdxl-vpred")
    model = save_tiny_sdxl_diffusers(root / "tiny-sdxl-v", seed=1, v_prediction=True)
    config = small_config(root, model, images=2, repeats=1, epoch=1, text_encoder_lr=0, unet_lr=1e-3, v_parameterization=True,
                          zero_terminal_snr=True, cache_text_encoder_outputs_to_disk=True, no_half_vae=True, cache_latents=False)
    (root / "run").mkdir()
    old = torch.get_num_threads()
    try:
        outcome = train_run(config, RunContext(root / "run"), Accelerator(cpu=True))
    finally:
        torch.set_num_threads(old)
    return SimpleNamespace(root=root, outcome=outcome, lora=load_file(str(root / "out" / "last.safetensors")))


def test_vpred_sdxl_unet_only_with_cached_text_outputs_trains(vpred_run):
    assert vpred_run.outcome.status == "finished"
    names = {k.split(".")[0] for k in vpred_run.lora}
    assert names and all(n.startswith("lora_unet_") for n in names)
    assert all(torch.isfinite(v).all() for v in vpred_run.lora.values())
    assert any(v.abs().max() > 0 for k, v in vpred_run.lora.items() if k.endswith("lora_up.weight"))
    files = sorted((vpred_run.root / "image").rglob("*_te_outputs.npz"))
    assert len(files) == 2
    with np.load(files[0]) as npz:  # Kohya's keys (library/strategy_sdxl.py)
        assert npz["hidden_state1"].shape == (77, TEXT1_HIDDEN) and npz["hidden_state2"].shape == (77, TEXT2_HIDDEN)
        assert npz["pool2"].ndim == 1


def test_the_log_notes_clip_skip_and_a_low_resolution_for_sdxl_only():
    from loratrainer.train.family import FAMILIES, notes

    config = with_values(TrainingConfig(), {"clip_skip": 2, "max_resolution": "512,512"})
    said = notes(FAMILIES["sdxl"], config)
    assert len(said) == 2 and "clip_skip 2" in str(said[0]) and "512 px" in str(said[1])
    assert notes(FAMILIES["sdxl"], with_values(TrainingConfig(), {"max_resolution": "1024,1024"})) == []
    assert notes(FAMILIES["sd15"], config) == []  # clip skip is SD1.5's own setting


def test_a_saved_state_keeps_both_text_encoders_adapters(tiny_sdxl):
    from loratrainer.train.family import family_for
    from loratrainer.train.state import _trained_params

    c, handle, _ = _sdxl_models(tiny_sdxl, unet_lr=1e-3, text_encoder_lr=1e-4)
    params = _trained_params(SimpleNamespace(handle=handle, components=c, family=family_for(c)))
    parts = {name.split(".")[0] for name in params}
    assert parts == {"unet", "text_encoder", "text_encoder_2"}
    assert len(params) == len(handle.unet_parameters() + handle.text_encoder_parameters() + handle.text_encoder_2_parameters())


def test_out_of_memory_advice_names_the_text_encoder_cache_when_it_would_help():
    from loratrainer.train.entry import oom_advice

    unet_only = with_values(TrainingConfig(), {"text_encoder_lr": 0})
    assert "cache_text_encoder_outputs" in oom_advice(unet_only, "training")
    assert "cache_text_encoder_outputs" not in oom_advice(with_values(unet_only, {"cache_text_encoder_outputs": True}), "training")
    assert "cache_text_encoder_outputs" not in oom_advice(with_values(unet_only, {"shuffle_caption": True}), "training")
    assert "cache_text_encoder_outputs" not in oom_advice(TrainingConfig(), "training")  # the text encoder trains


# -- Results on an SDXL run: `loratrainer compare` and the sample grid ---------------------------------------------


def test_cli_compare_renders_an_sdxl_run_at_each_weight(cli_run, tmp_path):
    """The epoch x weight grid of the SDXL run above through the CLI: loaded as an SDXL model, rendered with the
    SDXL pipeline at the run's resolution (64 px; no --width), the run's Kohya SDXL files applied by diffusers."""
    grid = tmp_path / "grid.png"
    saved = [e["path"] for e in cli_run.events if e["event"] == "checkpoint"]
    # the first and the last file (rows found by their run, as the run folder would give them; 2 rows keep it fast)
    argv = [sys.executable, "-m", "loratrainer", "compare", saved[0], saved[-1], "--weights", "0,1", "--prompt", "a red square",
            "--seed", "3", "--steps", "2", "-o", str(grid)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert grid.is_file() and "Traceback" not in done.stderr
    import json

    sidecar = json.loads(grid.with_suffix(".json").read_text())
    assert sidecar["rows"] == ["epoch 1", "final (step 4)"] and sidecar["weights"] == [0.0, 1.0]
    assert (sidecar["width"], sidecar["height"]) == (64, 64)
    image = np.asarray(Image.open(grid).convert("RGB"))
    cells = [[image[y:y + h, x:x + w] for x, y, w, h in row] for row in sidecar["cells"]]
    assert [len(row) for row in cells] == [2, 2] and all(c.shape == (64, 64, 3) for row in cells for c in row)
    base = cells[0][0]
    assert all(np.array_equal(row[0], base) for row in cells)  # weight 0 is the base model: one image down the column
    assert base.std() > 1  # a real image, not an empty cell
    assert not np.array_equal(cells[-1][1], base)  # the trained LoRA changes the base image


def test_sample_grid_of_an_sdxl_run(cli_run):
    """The prompt x epoch grid only reads the samples the run's events name: the SDXL run's one sample is its cell."""
    from loratrainer.compare.runs import read_run
    from loratrainer.compare.sample_grid import sample_grid

    grid = sample_grid(read_run(cli_run.run_dir))
    assert grid is not None and grid.is_file()
    import json

    sidecar = json.loads(grid.with_suffix(".json").read_text())
    assert sidecar["rows"] == ["1. a red square"] and len(sidecar["columns"]) == 1
    (x, y, w, h), = sidecar["cells"][0]
    (sample,) = [e["path"] for e in cli_run.events if e["event"] == "sample"]
    with Image.open(sample) as s:
        expected = np.asarray(s.convert("RGB"))
    cell = np.asarray(Image.open(grid).convert("RGB"))[y:y + h, x:x + w]
    assert cell.shape == expected.shape and np.abs(cell.astype(int) - expected.astype(int)).mean() < 3
