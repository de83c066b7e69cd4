"""Every setting that changes training provably takes effect: one row per schema field.

Each row sets a non-default value through the config (the way the GUI, the CLI and presets do) and observes the
documented effect at the lowest level that shows it: the noise added, the loss weight per timestep, the caption
string the text encoder sees, the image tensor, the optimizer's groups, the learning-rate curve, the saved file.
The expected values are computed here from the documented formulas, not by calling the code under test twice.

`test_every_field_has_a_row_or_a_reason` fails when a schema field has neither a row here, nor an entry in
COVERED_ELSEWHERE (a named test that must exist), nor a reason in NO_TRAINING_EFFECT. The end-to-end test at the
bottom trains the tiny model in-process through the trainer's own `entry.train_run` and checks that a fixed-seed run's
LoRA is reproducible and that each representative setting changes it.
"""

from __future__ import annotations

from tests.test_train_support import tiny_model  # noqa: F401  (first: hides a broken torchvision)

import importlib
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from loratrainer.config import NoiseSettings, TrainingConfig, field_specs, with_values
from loratrainer.data.check import check_dataset
from loratrainer.model.loading import noise_scheduler
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.saving import save_lora
from loratrainer.train.setup import add_lora
from loratrainer.train.dataset import TrainDataset
from loratrainer.train.loss import elementwise_loss, huber_threshold, sample_weights, training_target
from loratrainer.train.noise import noisy_latents, sample_noise
from tests.datasets import make_caption, make_dataset
from tests.tiny_sd import build_tiny_components, save_tiny_diffusers

ROWS: dict[str, Callable] = {}

# Fields that change training but whose effect needs a whole run of another kind; the named test must exist.
COVERED_ELSEWHERE = {
    "saving.resume": "tests/test_train_e2e.py::test_resume_from_a_saved_state_matches_the_uninterrupted_run",
    "folders.dataset_config": "tests/test_dataset_config.py::test_a_tiny_run_from_a_toml_trains_both_subsets_with_their_repeats",
    "network.dora_wd": "tests/test_train_dora.py::test_a_tiny_dora_run_trains_saves_and_applies_its_magnitudes",
    "dataset.masked_loss": "tests/test_masked_loss.py::test_a_tiny_sd15_run_trains_only_through_the_mask",
    "dataset.conditioning_data_dir": "tests/test_masked_loss.py::test_the_mask_follows_its_image_through_bucket_resize_random_crop_and_flip",
    "dataset.alpha_mask": "tests/test_masked_loss.py::test_alpha_mask_is_the_images_own_alpha",
    "training.validation_split": "tests/test_validation_loss.py::test_split_holds_out_a_share_of_each_folder_and_the_steps_count_only_training_images",
    "training.validation_seed": "tests/test_validation_loss.py::test_split_holds_out_a_share_of_each_folder_and_the_steps_count_only_training_images",
}

# Fields that do not change what is trained (the LoRA's weights), with the reason.
NO_TRAINING_EFFECT = {
    "folders.train_data_dir": "where the images are; what is found there is the dataset check's job (test_data_check.py)",
    "folders.output_dir": "where files are written",
    "folders.logging_dir": "where logs are written",
    "folders.output_name": "the file name of the LoRA",
    "sampling.sample_every_n_steps": "renders preview images; sampling restores the training RNGs (test_train_sampling.py)",
    "sampling.sample_every_n_epochs": "renders preview images only",
    "sampling.sample_at_first": "renders preview images only",
    "sampling.sample_sampler": "the sampler of preview images only",
    "sampling.sample_prompts": "the prompts of preview images only",
    "saving.save_model_as": "the file format; only safetensors exists",
    "saving.save_every_n_epochs": "when files are written, not what is trained (test_train_loop.py, test_train_units.py)",
    "saving.save_every_n_steps": "when files are written",
    "saving.save_last_n_epochs": "which old files are deleted",
    "saving.save_last_n_steps": "which old files are deleted",
    "saving.save_state": "also writes the training state; training continues the same",
    "saving.save_diffusers_format": "a second copy of the final file in diffusers format",
    "saving.existing_output": "refuse or rename when the file exists: a launcher check",
    "metadata.metadata_title": "text stored in the file's metadata",
    "metadata.metadata_author": "text stored in the file's metadata",
    "metadata.metadata_description": "text stored in the file's metadata",
    "metadata.metadata_license": "text stored in the file's metadata",
    "metadata.metadata_tags": "text stored in the file's metadata",
    "metadata.metadata_trigger_phrase": "text stored in the file's metadata",
    "metadata.training_comment": "text stored in the file's metadata",
    "folders.validation_data_dir": "validation images only, never trained on (test_validation_loss.py)",
    # an evaluation takes no gradients and draws from its own generators, not the training RNG (test_validation_loss.py)
    "training.validate_every_n_steps": "when the validation loss is computed",
    "training.validate_every_n_epochs": "when the validation loss is computed",
    "training.max_validation_steps": "how many validation batches are evaluated",
}


def row(path: str):
    def register(check):
        assert path not in ROWS, path
        ROWS[path] = check
        return check

    return register


def cfg(**values) -> TrainingConfig:
    # min_bucket_reso 64: the rows use small images, and a max_resolution below min_bucket_reso is refused
    return with_values(TrainingConfig(), {"min_bucket_reso": 64, **values})


CAPTION = "a, b, c, d, e, f, g, h"
KEYS = [(0, 1, b, 0, 0) for b in range(40)]  # (sample, epoch, batch, slot, use): 40 independent per-item draws


def _captions(config: TrainingConfig, epoch: int = 1) -> list[str]:
    """The caption strings the text encoder would see for 40 draws of one sample (latents stand in for pixels)."""
    sample = SimpleNamespace(caption=CAPTION, is_reg=False)
    ds = TrainDataset([sample], config, seed=7, latents={0: (torch.zeros(1), torch.ones(1))})
    return [ds[(i, epoch, b, s, u)]["caption"] for i, _, b, s, u in KEYS]


def _tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


# -- dataset: captions ----------------------------------------------------------------------------------------


def test_default_captions_are_passed_unchanged():
    assert set(_captions(cfg())) == {CAPTION}


@row("dataset.shuffle_caption")
def _shuffle(tmp_path):
    seen = _captions(cfg(shuffle_caption=True))
    assert all(sorted(_tags(c)) == sorted(_tags(CAPTION)) for c in seen)  # the same tags, none lost
    assert len(set(seen)) > 10  # in many orders


@row("dataset.keep_tokens")
def _keep_tokens(tmp_path):
    kept = _captions(cfg(shuffle_caption=True, keep_tokens=2))
    assert all(_tags(c)[:2] == ["a", "b"] for c in kept) and len(set(kept)) > 10
    free = _captions(cfg(shuffle_caption=True, keep_tokens=0))
    assert sum(_tags(c)[:2] == ["a", "b"] for c in free) < 10  # without keep_tokens the first two move


@row("dataset.caption_dropout_rate")
def _dropout(tmp_path):
    seen = _captions(cfg(caption_dropout_rate=0.5))
    empty = seen.count("")
    assert 8 <= empty <= 32 and set(seen) == {"", CAPTION}  # about half, the others whole


@row("dataset.caption_dropout_every_n_epochs")
def _dropout_every(tmp_path):
    c = cfg(caption_dropout_every_n_epochs=2)
    assert set(_captions(c, epoch=1)) == {CAPTION} and set(_captions(c, epoch=3)) == {CAPTION}
    assert set(_captions(c, epoch=2)) == {""} and set(_captions(c, epoch=4)) == {""}


@row("dataset.caption_tag_dropout_rate")
def _tag_dropout(tmp_path):
    seen = _captions(cfg(caption_tag_dropout_rate=0.5))
    counts = [len(_tags(c)) for c in seen]
    assert 2 < sum(counts) / len(counts) < 6  # about half of the 8 tags survive
    order = _tags(CAPTION)
    assert all(_tags(c) == [t for t in order if t in _tags(c)] for c in seen)  # no shuffle: the order is kept


# -- dataset: images ------------------------------------------------------------------------------------------


def _noise_image(path: Path, size=(64, 64)) -> Path:
    """A random-colour image: asymmetric (flip shows), coloured (hue shift shows), varied (crop shows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def _pixels(tmp_path: Path, image_size=(64, 64), **values) -> list[torch.Tensor]:
    """The image tensors TrainDataset yields for 40 draws of one image (no latent cache: the real pixels)."""
    root = tmp_path / "image"
    if not root.exists():
        _noise_image(root / "1_x" / "a.png", image_size)
        make_caption(root / "1_x" / "a.png", CAPTION)
    base = {"train_data_dir": str(root), "max_resolution": "128,128", "cache_latents": False}
    config = cfg(**{**base, **values})
    report = check_dataset(config)
    assert report.ok, report.format_text()
    ds = TrainDataset(report.samples, config, seed=7)
    return [ds[key]["pixels"] for key in KEYS]


def _distinct(tensors: list[torch.Tensor]) -> int:
    out: list[torch.Tensor] = []
    for t in tensors:
        if not any(torch.equal(t, o) for o in out):
            out.append(t)
    return len(out)


def test_default_image_is_the_same_every_draw(tmp_path):
    assert _distinct(_pixels(tmp_path)) == 1


@row("dataset.flip_aug")
def _flip(tmp_path):
    plain = _pixels(tmp_path)[0]
    seen = _pixels(tmp_path, flip_aug=True)
    flipped = [t for t in seen if torch.equal(t, plain.flip(-1))]
    assert 8 <= len(flipped) <= 32 and all(torch.equal(t, plain) or torch.equal(t, plain.flip(-1)) for t in seen)


@row("dataset.color_aug")
def _color(tmp_path):
    plain = _pixels(tmp_path)[0]
    seen = _pixels(tmp_path, color_aug=True)
    assert _distinct(seen) > 5 and all(t.shape == plain.shape for t in seen)
    # a hue shift keeps each pixel's brightness order between channels' max and min roughly; it changes colour
    moved = [float((t - plain).abs().mean()) for t in seen]
    assert max(moved) > 0.02


@row("dataset.random_crop")
def _crop(tmp_path):
    # 96x64 with bucket_no_upscale: resized stays 96x64, bucket 64x64, 32 columns to crop
    plain = _pixels(tmp_path, image_size=(96, 64))
    source = torch.from_numpy(np.asarray(Image.open(tmp_path / "image" / "1_x" / "a.png"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert _distinct(plain) == 1 and torch.equal(plain[0], source[:, :, 16:80])  # centred
    seen = _pixels(tmp_path, image_size=(96, 64), random_crop=True)
    lefts = set()
    for t in seen:
        (left,) = [x for x in range(33) if torch.equal(t, source[:, :, x : x + 64])]
        lefts.add(left)
    assert len(lefts) > 10


@row("dataset.alpha_background")
def _alpha(tmp_path):
    root = tmp_path / "image"
    image = root / "1_x" / "a.png"
    image.parent.mkdir(parents=True)
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(image)  # fully transparent red
    make_caption(image, "x")
    assert torch.all(_pixels(tmp_path)[0] == 1.0)  # white by default
    assert torch.all(_pixels(tmp_path, alpha_background="#000000")[0] == -1.0)


@row("dataset.caption_extension")
def _caption_extension(tmp_path):
    root = make_dataset(tmp_path / "image", {"1_x": 1}, captions="from txt")
    make_caption(root / "1_x" / "img_000.png", "from caption", ".caption")
    base = {"train_data_dir": str(root), "max_resolution": "64,64"}
    assert [s.caption for s in check_dataset(cfg(**base)).samples] == ["from txt"]
    assert [s.caption for s in check_dataset(cfg(**base, caption_extension=".caption")).samples] == ["from caption"]


@row("dataset.undersized_images")
def _undersized(tmp_path):
    root = make_dataset(tmp_path / "image", {"1_x": [(64, 64), (32, 32)]})
    base = {"train_data_dir": str(root), "max_resolution": "64,64"}
    skip = check_dataset(cfg(**base))
    assert skip.ok and [s.image_path.name for s in skip.samples] == ["img_000.png"]
    assert not check_dataset(cfg(**base, undersized_images="refuse")).ok


@row("folders.reg_data_dir")
def _reg_dir(tmp_path):
    train = make_dataset(tmp_path / "image", {"2_x": 3})
    reg = make_dataset(tmp_path / "reg", {"1_person": 6})
    base = {"train_data_dir": str(train), "max_resolution": "64,64", "train_batch_size": 1}
    plain = check_dataset(cfg(**base))
    with_reg = check_dataset(cfg(**base, reg_data_dir=str(reg)))
    assert not any(s.is_reg for s in plain.samples) and plain.steps.total_steps == 6
    assert sum(s.is_reg for s in with_reg.samples) == 6 and with_reg.steps.total_steps == 12  # Kohya: train + as many reg


@row("dataset.max_data_loader_n_workers")
def _workers(tmp_path):
    assert _loader(tmp_path, max_data_loader_n_workers=2).num_workers == 2
    assert _loader(tmp_path).num_workers == 0


@row("dataset.persistent_data_loader_workers")
def _persistent(tmp_path):
    assert _loader(tmp_path, max_data_loader_n_workers=1, persistent_data_loader_workers=True).persistent_workers
    assert not _loader(tmp_path, max_data_loader_n_workers=1).persistent_workers


def _loader(tmp_path: Path, **values):
    """setup.build_data's loader and sampler, without a latent cache (no models needed)."""
    from loratrainer.train.setup import build_data

    root = tmp_path / "image"
    if not root.exists():
        make_dataset(root, {"3_x": 4})
    config = cfg(train_data_dir=str(root), max_resolution="64,64", cache_latents=False, **values)
    report = check_dataset(config)
    loader, sampler = build_data(config, report, None, Accelerator(cpu=True), 7, torch.float32)
    loader.report = report
    return loader


# -- buckets --------------------------------------------------------------------------------------------------


def _bucket(tmp_path: Path, size, **values):
    root = tmp_path / f"image-{size[0]}x{size[1]}"
    if not root.exists():
        make_dataset(root, {"1_x": [size]})
    (sample,) = check_dataset(cfg(train_data_dir=str(root), **values)).samples
    return sample.bucket


@row("buckets.max_resolution")
def _max_resolution(tmp_path):
    assert _bucket(tmp_path, (128, 128)) == (128, 128)  # 512 by default, never upscaled
    assert _bucket(tmp_path, (128, 128), max_resolution="64,64") == (64, 64)


@row("buckets.enable_bucket")
def _enable_bucket(tmp_path):
    assert _bucket(tmp_path, (128, 64), max_resolution="128,128") == (128, 64)
    assert _bucket(tmp_path, (128, 64), max_resolution="128,128", enable_bucket=False) == (128, 128)


@row("buckets.bucket_no_upscale")
def _no_upscale(tmp_path):
    assert _bucket(tmp_path, (64, 64), max_resolution="128,128") == (64, 64)
    assert _bucket(tmp_path, (64, 64), max_resolution="128,128", bucket_no_upscale=False) == (128, 128)


@row("buckets.min_bucket_reso")
def _min_reso(tmp_path):
    base = {"max_resolution": "256,256", "bucket_no_upscale": False}
    # min 256 (and max_resolution 256x256's area): the square is the only bucket for a wide image
    assert _bucket(tmp_path, (512, 64), **base, min_bucket_reso=256) == (256, 256)
    wide = _bucket(tmp_path, (512, 64), **base, min_bucket_reso=64)
    assert wide[0] > wide[1] and wide[1] < 256, wide


@row("buckets.max_bucket_reso")
def _max_reso(tmp_path):
    base = {"max_resolution": "128,128", "bucket_no_upscale": False, "min_bucket_reso": 64}
    assert _bucket(tmp_path, (256, 64), **base) == (256, 64)
    assert _bucket(tmp_path, (256, 64), **base, max_bucket_reso=128) == (128, 64)


@row("buckets.bucket_reso_steps")
def _reso_steps(tmp_path):
    assert _bucket(tmp_path, (100, 100)) == (64, 64)
    assert _bucket(tmp_path, (100, 100), bucket_reso_steps=32) == (96, 96)


# -- steps and batches ----------------------------------------------------------------------------------------


@row("training.train_batch_size")
def _batch_size(tmp_path):
    loader = _loader(tmp_path, train_batch_size=3)
    assert [len(b["captions"]) for b in loader] == [3, 3, 3, 3] and loader.report.steps.total_steps == 4
    assert [len(b["captions"]) for b in _loader(tmp_path)] == [1] * 12


@row("training.epoch")
def _epochs(tmp_path):
    assert _loader(tmp_path).report.steps.total_steps == 12
    steps = _loader(tmp_path, epoch=3).report.steps
    assert steps.epochs == 3 and steps.total_steps == 36


@row("training.max_train_steps")
def _max_steps(tmp_path):
    steps = _loader(tmp_path, epoch=3, max_train_steps=20).report.steps
    assert steps.total_steps == 20 and steps.epochs == 2


@row("training.gradient_accumulation_steps")
def _accumulation(tmp_path):
    from loratrainer.train.loop import epoch_step_groups

    loader = _loader(tmp_path, train_batch_size=2, gradient_accumulation_steps=4)
    assert loader.report.steps.steps_per_epoch == 2  # 6 batches / 4, rounded up
    t = SimpleNamespace(config=cfg(gradient_accumulation_steps=4), step=0, report=loader.report, sampler=loader.batch_sampler, loader=loader)
    assert [len(g) for g in epoch_step_groups(t, 1)] == [4, 2]


@row("launch.num_processes")
def _processes(tmp_path):
    from loratrainer.launch.start import build_command

    assert _loader(tmp_path, num_processes=2).report.steps.total_steps == 6  # halved: each process takes half
    argv = build_command(cfg(num_processes=2), tmp_path)
    assert argv[argv.index("--num_processes") + 1] == "2" and "--multi_gpu" in argv


@row("launch.multi_gpu")
def _multi_gpu(tmp_path):
    from loratrainer.launch.start import build_command

    assert "--multi_gpu" not in build_command(cfg(), tmp_path) and "--multi_gpu" in build_command(cfg(multi_gpu=True), tmp_path)


@row("launch.gpu_ids")
def _gpu_ids(tmp_path):
    from loratrainer.launch.start import build_command

    argv = build_command(cfg(gpu_ids="0,1", multi_gpu=True), tmp_path)
    assert argv[argv.index("--gpu_ids") + 1] == "0,1" and "--gpu_ids" not in build_command(cfg(), tmp_path)


@row("launch.main_process_port")
def _port(tmp_path):
    from loratrainer.launch.start import build_command

    argv = build_command(cfg(main_process_port=29999), tmp_path)
    assert argv[argv.index("--main_process_port") + 1] == "29999" and "--main_process_port" not in build_command(cfg(), tmp_path)


@row("launch.num_machines")
@row("launch.machine_rank")
@row("launch.main_process_ip")
@row("launch.rdzv_backend")
def _machines(tmp_path):
    """Several machines: each launch names its rank and where to meet, in accelerate launch's own flags."""
    from loratrainer.launch.start import build_command

    single = build_command(cfg(), tmp_path)
    assert single[single.index("--num_machines") + 1] == "1" and "--machine_rank" not in single
    argv = build_command(cfg(num_machines=2, num_processes=2, machine_rank=1, main_process_ip="10.1.2.3",
                             rdzv_backend="c10d"), tmp_path)
    flag = lambda name: argv[argv.index(name) + 1]  # noqa: E731
    assert (flag("--num_machines"), flag("--machine_rank"), flag("--main_process_ip"), flag("--rdzv_backend")) == (
        "2", "1", "10.1.2.3", "c10d")


@row("launch.num_cpu_threads_per_process")
def _threads(tmp_path):
    from loratrainer.train.entry import make_accelerator
    from loratrainer.launch.start import build_command

    argv = build_command(cfg(num_cpu_threads_per_process=3), tmp_path)
    assert argv[argv.index("--num_cpu_threads_per_process") + 1] == "3"
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the suite's own count (tests/conftest.py): the setting must change it
        make_accelerator(cfg(num_cpu_threads_per_process=2, mixed_precision="no"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


@row("precision.mixed_precision")
def _mixed_precision(tmp_path):
    from accelerate.state import AcceleratorState

    from loratrainer.train.entry import make_accelerator
    from loratrainer.launch.start import build_command
    from loratrainer.train.setup import WEIGHT_DTYPES

    argv = build_command(cfg(mixed_precision="bf16"), tmp_path)
    assert argv[argv.index("--mixed_precision") + 1] == "bf16"
    old = torch.get_num_threads()
    AcceleratorState._reset_state(True)
    try:
        accelerator = make_accelerator(cfg(mixed_precision="bf16"))
        assert accelerator.mixed_precision == "bf16" and WEIGHT_DTYPES[accelerator.mixed_precision] == torch.bfloat16
        with accelerator.autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    finally:
        AcceleratorState._reset_state(True)
        torch.set_num_threads(old)


# -- noise ----------------------------------------------------------------------------------------------------


def _noise(config: TrainingConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the noise the loop would add, the plain randn_like draw of the same seed)."""
    latents = torch.zeros(4, 4, 32, 32)
    torch.manual_seed(seed)
    random.seed(seed)
    noise = sample_noise(latents, config.noise)
    torch.manual_seed(seed)
    return noise, torch.randn_like(latents)


def test_default_noise_is_plain_gaussian():
    noise, plain = _noise(cfg())
    assert torch.equal(noise, plain)


@row("noise.noise_offset")
def _noise_offset(tmp_path):
    noise, plain = _noise(cfg(noise_offset=0.5))
    shift = noise - plain
    # a constant per (image, channel), 0.5 x N(0, 1): Kohya's offset noise
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    per_channel = shift[:, :, 0, 0]
    assert per_channel.abs().max() > 0.1 and 0.2 < float(per_channel.std()) < 1.0


@row("noise.multires_noise_iterations")
def _multires(tmp_path):
    off, plain = _noise(cfg(multires_noise_discount=0.8))
    assert torch.equal(off, plain)  # 0 iterations: the discount alone does nothing
    noise, plain = _noise(cfg(multires_noise_iterations=4, multires_noise_discount=0.8))
    assert not torch.allclose(noise, plain) and abs(float(noise.std()) - 1.0) < 1e-4  # normalised
    # the added levels are low-frequency: neighbouring pixels correlate, which plain noise does not
    assert abs(_neighbour_corr(plain)) < 0.05 and _neighbour_corr(noise) > 0.15


@row("noise.multires_noise_discount")
def _multires_discount(tmp_path):
    weak, _ = _noise(cfg(multires_noise_iterations=4, multires_noise_discount=0.1))
    strong, _ = _noise(cfg(multires_noise_iterations=4, multires_noise_discount=0.9))
    assert _neighbour_corr(strong) > _neighbour_corr(weak) + 0.1  # more weight on the coarse levels: smoother noise


def _neighbour_corr(x: torch.Tensor) -> float:
    """Correlation of horizontally neighbouring values: about 0 for white noise, higher for smooth noise."""
    return float(torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1])


@row("noise.ip_noise_gamma")
def _ip_noise(tmp_path):
    sched = noise_scheduler()
    latents, noise = torch.zeros(2, 4, 8, 8), torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 999])
    torch.manual_seed(1)
    plain = noisy_latents(sched, latents, noise, t, cfg().noise)
    sigma = float((1 - sched.alphas_cumprod[999]) ** 0.5)
    assert torch.allclose(plain, sigma * noise, atol=1e-5)  # zero latents: add_noise is sigma x noise
    torch.manual_seed(1)
    perturbed = noisy_latents(sched, latents, noise, t, cfg(ip_noise_gamma=0.5).noise)
    torch.manual_seed(1)
    extra = torch.randn_like(noise)
    assert torch.allclose(perturbed, sigma * (noise + 0.5 * extra), atol=1e-5)


# -- loss -----------------------------------------------------------------------------------------------------


def _weights(config: TrainingConfig, timesteps, is_reg=None, v: bool = False) -> torch.Tensor:
    sched = noise_scheduler(v_prediction=v)
    t = torch.tensor(timesteps)
    reg = torch.tensor(is_reg if is_reg is not None else [False] * len(timesteps))
    return sample_weights(sched, t, reg, config.loss, config.dataset.prior_loss_weight)


def _snr(timesteps) -> torch.Tensor:
    """SNR(t) = alpha_bar / (1 - alpha_bar) from SD1.5's scaled-linear betas, computed here from the formula."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[torch.tensor(timesteps)]
    return (alpha_bar / (1 - alpha_bar)).float()


@row("dataset.prior_loss_weight")
def _prior_weight(tmp_path):
    assert _weights(cfg(), [10, 10], [False, True]).tolist() == [1.0, 1.0]
    assert _weights(cfg(prior_loss_weight=0.25), [10, 10, 500], [False, True, True]).tolist() == [1.0, 0.25, 0.25]
    # the weight multiplies the reg sample's loss: batch loss = mean(l_train, 0.25 l_reg)
    s = cfg(prior_loss_weight=0.25).loss
    pred, target = torch.zeros(2, 1, 1, 1), torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)
    from loratrainer.train.loss import diffusion_loss

    assert float(diffusion_loss(pred, target, torch.tensor([1.0, 0.25]), s)) == pytest.approx((1.0 + 0.25 * 4.0) / 2)


@row("loss.min_snr_gamma")
def _min_snr(tmp_path):
    steps = [0, 50, 200, 500, 999]
    assert _weights(cfg(), steps).tolist() == [1.0] * 5
    expected = torch.clamp(_snr(steps), max=5.0) / _snr(steps)  # min(SNR, gamma) / SNR for epsilon prediction
    got = _weights(cfg(min_snr_gamma=5), steps)
    assert torch.allclose(got, expected, rtol=1e-4) and got[0] < 0.01 and got[-1] == pytest.approx(1.0)
    expected_v = torch.clamp(_snr(steps), max=5.0) / (_snr(steps) + 1)  # v prediction: / (SNR + 1)
    assert torch.allclose(_weights(cfg(min_snr_gamma=5), steps, v=True), expected_v, rtol=1e-4)


def _loss(config: TrainingConfig, error: float, timestep: int = 500) -> float:
    """The loop's per-element loss for a prediction `error` away from the target."""
    s = config.loss
    sched = noise_scheduler()
    t = torch.tensor([timestep])
    c = huber_threshold(sched, t, s) if s.loss_type != "l2" else None
    target = torch.full((1, 1, 1, 1), -1.5)  # not zero: pred - target and pred + target must differ
    return float(elementwise_loss(target + error, target, s, c))


@row("loss.loss_type")
def _loss_type(tmp_path):
    assert _loss(cfg(), 3.0) == pytest.approx(9.0)  # l2
    c = 0.1  # huber, constant schedule: 2c (sqrt(e^2 + c^2) - c)
    assert _loss(cfg(loss_type="huber", huber_schedule="constant"), 3.0) == pytest.approx(2 * c * (math.sqrt(9 + c * c) - c), rel=1e-5)
    assert _loss(cfg(loss_type="smooth_l1", huber_schedule="constant"), 3.0) == pytest.approx(2 * (math.sqrt(9 + c * c) - c), rel=1e-5)


@row("loss.huber_c")
def _huber_c(tmp_path):
    for c in (0.1, 0.5):
        got = _loss(cfg(loss_type="huber", huber_schedule="constant", huber_c=c), 3.0)
        assert got == pytest.approx(2 * c * (math.sqrt(9 + c * c) - c), rel=1e-5)


@row("loss.huber_schedule")
def _huber_schedule(tmp_path):
    steps = [0, 250, 999]
    s = lambda **v: cfg(loss_type="huber", huber_c=0.1, **v).loss  # noqa: E731
    sched, t = noise_scheduler(), torch.tensor(steps)
    constant = huber_threshold(sched, t, s(huber_schedule="constant")).flatten()
    assert torch.allclose(constant, torch.full((3,), 0.1))
    exponential = huber_threshold(sched, t, s(huber_schedule="exponential")).flatten()
    assert torch.allclose(exponential, torch.tensor([0.1 ** (k / 1000) for k in steps]), rtol=1e-5)  # c^(t/T)
    snr = huber_threshold(sched, t, s()).flatten()  # Kohya's default: (1 - c) / (1 + sigma)^2 + c
    sigma = (1 / _snr(steps)) ** 0.5
    assert torch.allclose(snr, 0.9 / (1 + sigma) ** 2 + 0.1, rtol=1e-4)


def test_the_training_target_is_the_noise_or_the_velocity():
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    assert torch.equal(training_target(noise_scheduler(), latents, noise, t), noise)  # epsilon prediction
    a = noise_scheduler().alphas_cumprod[t].reshape(2, 1, 1, 1)
    velocity = a.sqrt() * noise - (1 - a).sqrt() * latents
    assert torch.allclose(training_target(noise_scheduler(v_prediction=True), latents, noise, t), velocity, atol=1e-6)


def _kohya_pyramid_noise_like(noise, iterations, discount):
    """sd-scripts' pyramid_noise_like (kohya-ss sd-scripts library/custom_train_functions.py), restated as reference."""
    b, c, h, w = noise.shape
    for i in range(iterations):
        r = random.random() * 2 + 2
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        noise += torch.nn.functional.interpolate(torch.randn(b, c, hn, wn), size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [(24, 40), (32, 32)])
def test_multires_noise_equals_kohyas_draw_for_draw(seed, size):
    latents = torch.zeros(2, 4, *size)  # non-square and square, small enough that the levels reach one row or column
    torch.manual_seed(seed)
    random.seed(seed)
    ours = sample_noise(latents, cfg(multires_noise_iterations=10, multires_noise_discount=0.5).noise)
    torch.manual_seed(seed)
    random.seed(seed)
    reference = _kohya_pyramid_noise_like(torch.randn_like(latents), 10, 0.5)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_timesteps_cover_zero_to_the_last():
    from loratrainer.train.noise import sample_timesteps

    torch.manual_seed(0)
    t = sample_timesteps(20000, 1000, torch.device("cpu"))
    assert t.dtype == torch.int64 and int(t.min()) == 0 and int(t.max()) == 999  # sd-scripts: randint(0, T)


# -- optimizer and schedule -----------------------------------------------------------------------------------


class _Handle:
    """Two parameter lists standing in for the LoRA of the UNet and of the text encoder."""

    def __init__(self):
        self.unet = [torch.nn.Parameter(torch.zeros(3))]
        self.te = [torch.nn.Parameter(torch.zeros(2))]

    def unet_parameters(self):
        return self.unet

    def text_encoder_parameters(self):
        return self.te


def _optimizer(**values):
    from loratrainer.train.optimizers import build_optimizer
    from loratrainer.train.setup import param_groups

    config = cfg(**{"optimizer": "AdamW", **values})
    handle = _Handle()
    opt = build_optimizer(config, param_groups(handle, config))
    return opt, handle


def _group_lrs(opt, handle) -> dict[str, float]:
    out = {}
    for g in opt.param_groups:
        part = "unet" if g["params"][0] is handle.unet[0] else "te"
        out[part] = g["lr"]
    return out


@row("optimizer.optimizer")
def _optimizer_name(tmp_path):
    assert type(_optimizer()[0]) is torch.optim.AdamW
    sgd = _optimizer(optimizer="SGDNesterov")[0]
    assert type(sgd) is torch.optim.SGD and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert type(_optimizer(optimizer="SGD")[0]) is torch.optim.SGD
    assert type(_optimizer(optimizer="Lion")[0]).__name__ == "Lion"  # lion-pytorch's, or ours when it is missing


@row("optimizer.optimizer_args")
def _optimizer_args(tmp_path):
    opt = _optimizer(optimizer_args="weight_decay=0.25 betas=0.8,0.9")[0]
    assert opt.defaults["weight_decay"] == 0.25 and opt.defaults["betas"] == (0.8, 0.9)
    assert _optimizer()[0].defaults["weight_decay"] == 0.01  # torch's AdamW default


@row("optimizer.learning_rate")
def _learning_rate(tmp_path):
    assert _group_lrs(*_optimizer(learning_rate=3e-3)) == {"unet": 1e-4, "te": 1e-4}  # own rates set: not used
    assert _group_lrs(*_optimizer(learning_rate=3e-3, unet_lr=None, text_encoder_lr=None)) == {"unet": 3e-3, "te": 3e-3}


@row("optimizer.unet_lr")
def _unet_lr(tmp_path):
    assert _group_lrs(*_optimizer(unet_lr=2e-3)) == {"unet": 2e-3, "te": 1e-4}
    assert _group_lrs(*_optimizer(unet_lr=0)) == {"te": 1e-4}  # 0: the UNet is not trained


@row("optimizer.text_encoder_lr")
def _te_lr(tmp_path):
    assert _group_lrs(*_optimizer(text_encoder_lr=5e-5)) == {"unet": 1e-4, "te": 5e-5}
    assert _group_lrs(*_optimizer(text_encoder_lr=0)) == {"unet": 1e-4}


def _curve(total: int = 20, **values) -> list[float]:
    """The learning rate of each of `total` steps, as the loop reads it before stepping the scheduler."""
    from loratrainer.train.schedulers import build_lr_scheduler, current_lr

    config = cfg(**{"optimizer": "AdamW", "learning_rate": 1.0, "unet_lr": 1.0, "text_encoder_lr": 1.0, **values})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(config, opt, total)
    out = []
    for _ in range(total):
        out.append(current_lr(sched))
        opt.step()
        sched.step()
    return out


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def test_default_schedule_is_cosine_with_ten_percent_warmup():
    expected = [i / 2 for i in range(2)] + [0.5 * (1 + math.cos(math.pi * (i - 2) / 18)) for i in range(2, 20)]
    assert _close(_curve(), expected)


@row("optimizer.lr_scheduler")
def _scheduler(tmp_path):
    assert _close(_curve(lr_scheduler="linear", lr_warmup=0), [1 - i / 20 for i in range(20)])
    assert _close(_curve(lr_scheduler="constant"), [1.0] * 20)  # constant: the warm-up is ignored
    assert _close(_curve(lr_scheduler="constant_with_warmup"), [min(1.0, i / 2) for i in range(20)])


@row("optimizer.lr_warmup")
def _warmup(tmp_path):
    assert _close(_curve(lr_scheduler="constant_with_warmup", lr_warmup=50), [min(1.0, i / 10) for i in range(20)])


@row("optimizer.lr_warmup_steps")
def _warmup_steps(tmp_path):
    # steps override the percentage
    assert _close(_curve(lr_scheduler="constant_with_warmup", lr_warmup=50, lr_warmup_steps=4), [min(1.0, i / 4) for i in range(20)])


@row("optimizer.lr_scheduler_num_cycles")
def _cycles(tmp_path):
    expected = [0.5 * (1 + math.cos(math.pi * ((2 * i / 20) % 1.0))) for i in range(20)]
    assert _close(_curve(lr_scheduler="cosine_with_restarts", lr_warmup=0, lr_scheduler_num_cycles=2), expected)


@row("optimizer.lr_scheduler_power")
def _power(tmp_path):
    end = 1e-7  # diffusers' polynomial schedule ends at lr_end = 1e-7
    expected = [(1 - end) * (1 - i / 20) ** 2 + end for i in range(20)]
    assert _close(_curve(lr_scheduler="polynomial", lr_warmup=0, lr_scheduler_power=2), expected)


def _apply(config: TrainingConfig, grad_norm: float, handle=None) -> float:
    """loop.apply_gradients on one parameter whose gradient has `grad_norm`; returns how far SGD(lr=1) moved it."""
    from loratrainer.train.loop import apply_gradients

    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), grad_norm / 2)  # norm = grad_norm
    opt = torch.optim.SGD([p], lr=1.0)
    t = SimpleNamespace(config=config, accelerator=Accelerator(cpu=True), params=[p], optimizer=opt,
                        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), handle=handle)
    apply_gradients(t)
    return float(p.detach().norm())


@row("optimizer.max_grad_norm")
def _max_grad_norm(tmp_path):
    assert _apply(cfg(), 10.0) == pytest.approx(1.0, rel=1e-4)  # clipped to 1 by default
    assert _apply(cfg(max_grad_norm=0.25), 10.0) == pytest.approx(0.25, rel=1e-4)
    assert _apply(cfg(max_grad_norm=0), 10.0) == pytest.approx(10.0, rel=1e-4)  # 0: no clipping


# -- network --------------------------------------------------------------------------------------------------


def _inject(**values):
    config = cfg(**values)
    return add_lora(build_tiny_components(), config), config


def _first(handle, part: str, conv: bool = False):
    """The first adapted module of `part`: conv=True a resnet 3x3 convolution (conv_dim), else an attention/MLP one
    (LoCon's resnet time_emb_proj / 1x1 conv_shortcut are neither: network_dim, but not what these rows look at)."""
    for info in handle.modules.values():
        layer = handle.model(part).get_submodule(info.path)
        is_conv3 = getattr(layer.get_base_layer(), "kernel_size", None) == (3, 3)
        if info.part == part and ("resnets" in info.path) == conv and is_conv3 == conv:
            return layer, info
    raise AssertionError("no module")


@row("network.network_dim")
def _dim(tmp_path):
    for dim in (8, 4):
        handle, _ = _inject(network_dim=dim)
        layer, _ = _first(handle, "unet")
        assert layer.lora_A["default"].weight.shape[0] == dim and layer.lora_B["default"].weight.shape[1] == dim


@row("network.network_alpha")
def _alpha_scale(tmp_path):
    handle, _ = _inject(network_dim=8, network_alpha=4)
    layer, _ = _first(handle, "unet")
    assert layer.scaling["default"] == pytest.approx(0.5)  # alpha / rank scales the update
    state = lora_state_dict(handle, "float")
    assert {float(v) for k, v in state.items() if k.endswith(".alpha")} == {4.0}


@row("network.lora_type")
def _lora_type(tmp_path):
    standard, _ = _inject()
    assert not any("resnets" in i.path for i in standard.modules.values())
    locon, _ = _inject(lora_type="LoCon")
    assert any("resnets" in i.path and "conv" in i.path for i in locon.modules.values())
    # and, as sd-scripts' LoCon, the resnets' time-embedding linears and 1x1 shortcuts
    assert any(i.path.endswith("time_emb_proj") for i in locon.modules.values())
    assert any(i.path.endswith("conv_shortcut") for i in locon.modules.values())
    assert "default" in _lycoris_layer(lora_type="LoHa").hada_w1_a  # Hadamard product of two low-rank pairs
    assert "default" in _lycoris_layer(lora_type="LoKr").lokr_w1  # Kronecker product


@row("network.conv_dim")
def _conv_dim(tmp_path):
    handle, _ = _inject(lora_type="LoCon", conv_dim=3)
    layer, _ = _first(handle, "unet", conv=True)
    assert layer.lora_A["default"].weight.shape[0] == 3 and _first(handle, "unet")[0].lora_A["default"].weight.shape[0] == 8


@row("network.conv_alpha")
def _conv_alpha(tmp_path):
    handle, _ = _inject(lora_type="LoCon", conv_dim=4, conv_alpha=2)
    layer, info = _first(handle, "unet", conv=True)
    assert layer.scaling["default"] == pytest.approx(0.5) and info.alpha == 2
    assert _first(handle, "unet")[0].scaling["default"] == pytest.approx(1 / 8)


@row("network.network_dropout")
def _net_dropout(tmp_path):
    layer, _ = _first(_inject()[0], "unet")
    assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)
    layer, _ = _first(_inject(network_dropout=0.3)[0], "unet")
    assert isinstance(layer.lora_dropout["default"], torch.nn.Dropout) and layer.lora_dropout["default"].p == 0.3


def _lycoris_layer(conv: bool = False, **values):
    handle, _ = _inject(**values)
    return _first(handle, "unet", conv=conv)[0]


@row("network.factor")
def _lokr_factor(tmp_path):
    # a 32-wide linear of the tiny UNet: LoKr splits each side into a Kronecker pair; factor 2 gives (2, 16)
    assert tuple(_lycoris_layer(lora_type="LoKr", factor=2).lokr_w1["default"].shape) == (2, 2)
    assert tuple(_lycoris_layer(lora_type="LoKr").lokr_w1["default"].shape) != (2, 2)  # -1: near the square root


@row("network.decompose_both")
def _lokr_decompose_both(tmp_path):
    plain = _lycoris_layer(lora_type="LoKr", network_dim=1, network_alpha=1)
    assert "default" in plain.lokr_w1 and "default" not in plain.lokr_w1_a
    both = _lycoris_layer(lora_type="LoKr", network_dim=1, network_alpha=1, decompose_both=True)
    assert "default" not in both.lokr_w1 and "default" in both.lokr_w1_a and "default" in both.lokr_w1_b  # low-rank


@row("network.use_tucker")
def _loha_tucker(tmp_path):
    assert "default" not in _lycoris_layer(conv=True, lora_type="LoHa").hada_t1
    assert "default" in _lycoris_layer(conv=True, lora_type="LoHa", use_tucker=True).hada_t1  # the Tucker core


@row("network.rank_dropout")
def _rank_dropout(tmp_path):
    assert _lycoris_layer(lora_type="LoHa").rank_dropout["default"] == 0.0
    assert _lycoris_layer(lora_type="LoHa", rank_dropout=0.25).rank_dropout["default"] == 0.25
    assert _lycoris_layer(lora_type="LoKr", rank_dropout=0.25).rank_dropout["default"] == 0.25


@row("network.module_dropout")
def _module_dropout(tmp_path):
    assert _lycoris_layer(lora_type="LoHa").module_dropout["default"] == 0.0
    assert _lycoris_layer(lora_type="LoHa", module_dropout=0.25).module_dropout["default"] == 0.25


@row("precision.full_fp16")
def _full_fp16(tmp_path):
    handle, _ = _inject()
    assert {p.dtype for p in handle.unet_parameters()} == {torch.float32}
    handle, _ = _inject(full_fp16=True)
    assert {p.dtype for p in handle.unet_parameters() + handle.text_encoder_parameters()} == {torch.float16}


@row("precision.full_bf16")
def _full_bf16(tmp_path):
    handle, _ = _inject(mixed_precision="bf16", full_bf16=True)
    assert {p.dtype for p in handle.unet_parameters() + handle.text_encoder_parameters()} == {torch.bfloat16}


@row("network.scale_weight_norms")
def _max_norm(tmp_path):
    def largest_after_step(**values):
        handle, config = _inject(**values)
        torch.manual_seed(0)
        for p in handle.unet_parameters() + handle.text_encoder_parameters():
            p.data.normal_()  # big updates: up @ down far above 0.5
        _apply(config, 0.0, handle)
        from loratrainer.train.max_norm import apply_max_norm

        return apply_max_norm(handle, 1e9)[1]  # (nothing scaled at 1e9) the largest norm now

    assert largest_after_step() > 5
    assert largest_after_step(scale_weight_norms=0.5) == pytest.approx(0.5, rel=1e-3)


@row("precision.save_precision")
def _save_precision(tmp_path):
    from safetensors.torch import load_file

    from loratrainer.train.checkpoints import Progress
    from loratrainer.train.saving import Saver

    root = make_dataset(tmp_path / "image", {"1_x": 1})
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("float", torch.float32)):
        config = cfg(train_data_dir=str(root), max_resolution="64,64", save_precision=precision)
        t = SimpleNamespace(config=config, report=check_dataset(config), handle=_inject()[0], seed=1,
                            components=SimpleNamespace(model_name="m", model_hash=""), accelerator=SimpleNamespace(num_processes=1, mixed_precision="no"))
        path = tmp_path / f"{precision}.safetensors"
        Saver(t).write_lora(path, Progress(1, 1, 1, 1, True))
        assert {v.dtype for v in load_file(str(path)).values()} == {dtype}


# -- model, text encoder, caching (through setup's own functions, on the tiny model) ---------------------------


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return save_tiny_diffusers(tmp_path_factory.mktemp("tiny3") / "tiny-seed3", seed=3)


def _models(tiny: Path, **values):
    from loratrainer.train.setup import load_and_adapt_models

    config = cfg(pretrained_model_name_or_path=str(tiny), mixed_precision="no", **values)
    components, handle, _ = load_and_adapt_models(config, Accelerator(cpu=True))
    return components, handle, config


@row("model.pretrained_model_name_or_path")
def _base_model(tmp_path, tiny_model, other_model):
    a, _, _ = _models(tiny_model)
    b, _, _ = _models(other_model)
    key = "conv_in.weight"
    assert torch.equal(a.unet.state_dict()[key], build_tiny_components(0).unet.state_dict()[key])
    assert torch.equal(b.unet.state_dict()[key], build_tiny_components(3).unet.state_dict()[key])


@row("model.vae")
def _vae(tmp_path, tiny_model, other_model):
    c, _, _ = _models(tiny_model, vae=str(other_model))
    other = build_tiny_components(3).vae.state_dict()
    assert all(torch.equal(v, other[k]) for k, v in c.vae.state_dict().items())
    assert torch.equal(c.unet.state_dict()["conv_in.weight"], build_tiny_components(0).unet.state_dict()["conv_in.weight"])


@row("model.v_parameterization")
def _v_param(tmp_path, tiny_model):
    c, _, _ = _models(tiny_model)
    assert c.noise_scheduler.config.prediction_type == "epsilon"
    c, _, _ = _models(tiny_model, v_parameterization=True)
    sched = c.noise_scheduler
    assert sched.config.prediction_type == "v_prediction"
    latents, noise, t = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([500])
    a = sched.alphas_cumprod[500]
    # v = sqrt(a) noise - sqrt(1 - a) x0
    assert torch.allclose(training_target(sched, latents, noise, t), -((1 - a) ** 0.5) * latents, atol=1e-6)


@row("precision.attention")
def _attention(tmp_path, tiny_model):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    c, _, _ = _models(tiny_model)
    assert {type(p) for p in c.unet.attn_processors.values()} == {AttnProcessor2_0}
    c, _, _ = _models(tiny_model, attention="none")
    assert {type(p) for p in c.unet.attn_processors.values()} == {AttnProcessor}


@row("precision.gradient_checkpointing")
def _checkpointing(tmp_path, tiny_model):
    c, _, _ = _models(tiny_model)
    assert not c.unet.is_gradient_checkpointing and not c.text_encoder.is_gradient_checkpointing
    c, _, _ = _models(tiny_model, gradient_checkpointing=True)
    assert c.unet.is_gradient_checkpointing and c.text_encoder.is_gradient_checkpointing


@row("precision.channels_last")
def _channels_last(tmp_path, tiny_model):
    c, _, _ = _models(tiny_model)
    assert c.unet.conv_in.weight.is_contiguous()
    c, _, _ = _models(tiny_model, channels_last=True)
    conv = c.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@row("precision.dynamo_backend")
def _dynamo(tmp_path, tiny_model):
    c, _, _ = _models(tiny_model)
    assert c.unet._compiled_call_impl is None
    c, _, _ = _models(tiny_model, dynamo_backend="eager")  # compiled in place; the first call would compile
    assert c.unet._compiled_call_impl is not None


@row("network.network_weights")
def _network_weights(tmp_path, tiny_model):
    _, handle, _ = _models(tiny_model)
    torch.manual_seed(0)
    for p in handle.unet_parameters() + handle.text_encoder_parameters():
        p.data.normal_()
    state = lora_state_dict(handle, "float")
    save_lora(tmp_path / "start.safetensors", state, {})
    _, fresh, _ = _models(tiny_model)
    assert not all(torch.equal(state[k], v) for k, v in lora_state_dict(fresh, "float").items())
    _, loaded, _ = _models(tiny_model, network_weights=str(tmp_path / "start.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in lora_state_dict(loaded, "float").items())


def _text_states(tiny: Path, captions: list[str], **values) -> torch.Tensor:
    from loratrainer.train.loop import text_states

    components, _, config = _models(tiny, **values)
    t = SimpleNamespace(config=config, text_encoder=components.text_encoder, components=components,
                        accelerator=Accelerator(cpu=True), text_cache=None)
    with torch.no_grad():
        return text_states(t, captions)


@row("model.clip_skip")
def _clip_skip(tmp_path, tiny_model):
    te = build_tiny_components().text_encoder
    ids = build_tiny_components().tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
        norm = getattr(te, "text_model", te).final_layer_norm  # transformers 5 flattened CLIPTextModel
        last, penultimate = out.last_hidden_state, norm(out.hidden_states[-2])
    assert torch.allclose(_text_states(tiny_model, ["a photo"]), last, atol=1e-5)
    assert torch.allclose(_text_states(tiny_model, ["a photo"], clip_skip=2), penultimate, atol=1e-5)


@row("model.max_token_length")
def _max_tokens(tmp_path, tiny_model):
    long = " ".join(f"word{i}" for i in range(100))
    assert _text_states(tiny_model, [long]).shape[1] == 77
    assert _text_states(tiny_model, [long], max_token_length=150).shape[1] == 152  # BOS + 150 + EOS
    assert _text_states(tiny_model, [long], max_token_length=225).shape[1] == 227


def _data(tmp_path: Path, tiny: Path, **values):
    from loratrainer.train.setup import build_data

    root = tmp_path / "image"
    if not root.exists():
        make_dataset(root, {"1_x": 2})
    components, _, config = _models(tiny, train_data_dir=str(root), max_resolution="64,64", **values)
    report = check_dataset(config)
    loader, _ = build_data(config, report, components, Accelerator(cpu=True), 7, torch.float32)
    return next(iter(loader)), report


@row("precision.cache_latents")
def _cache(tmp_path, tiny_model):
    batch, _ = _data(tmp_path, tiny_model)
    assert batch["latents"].shape == (1, 4, 8, 8) and "pixels" not in batch
    batch, _ = _data(tmp_path, tiny_model, cache_latents=False)
    assert batch["pixels"].shape == (1, 3, 64, 64) and "latents" not in batch


@row("precision.cache_latents_to_disk")
def _cache_disk(tmp_path, tiny_model):
    from loratrainer.train.latent_cache import npz_path

    _, report = _data(tmp_path, tiny_model)
    assert not any(npz_path(s).exists() for s in report.samples)
    _, report = _data(tmp_path, tiny_model, cache_latents_to_disk=True)
    assert all(npz_path(s).exists() for s in report.samples)


# -- SDXL-era settings (the trainer's family seam: tests/test_train_sdxl.py trains SDXL with them end to end) --------


@pytest.fixture(scope="module")
def tiny_sdxl_model(tmp_path_factory) -> Path:
    from tests.tiny_sdxl import save_tiny_sdxl_diffusers

    return save_tiny_sdxl_diffusers(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl")


@row("model.model_family")
def _model_family(tmp_path, tiny_model, tiny_sdxl_model):
    from loratrainer.errors import UserError

    assert getattr(_models(tiny_sdxl_model)[0], "text_encoder_2", None) is not None  # auto: the model's own family
    assert getattr(_models(tiny_sdxl_model, model_family="sdxl")[0], "text_encoder_2", None) is not None
    with pytest.raises(UserError) as err:
        _models(tiny_sdxl_model, model_family="sd15")
    assert err.value.code == "model.family_mismatch"
    with pytest.raises(UserError):
        _models(tiny_model, model_family="sdxl")


def _bf16_models(tiny: Path, **values):
    from loratrainer.train.setup import load_and_adapt_models

    config = cfg(pretrained_model_name_or_path=str(tiny), mixed_precision="bf16", **values)
    # what load_and_adapt_models reads of an accelerator (a second real one in this process may not change precision)
    accelerator = SimpleNamespace(mixed_precision="bf16", device=torch.device("cpu"))
    return load_and_adapt_models(config, accelerator)[0]


@row("precision.no_half_vae")
def _no_half_vae(tmp_path, tiny_model):
    c = _bf16_models(tiny_model)
    assert c.vae.dtype == torch.bfloat16 and c.unet.dtype == torch.bfloat16
    c = _bf16_models(tiny_model, no_half_vae=True)
    assert c.vae.dtype == torch.float32 and c.unet.dtype == torch.bfloat16  # only the VAE


@row("precision.fp8_base")
def _fp8_base(tmp_path, tiny_model):
    from loratrainer.errors import UserError
    from loratrainer.train.family import store_unet_in_fp8

    with pytest.raises(UserError) as err:  # no CUDA here: one sentence instead of a failed first step
        _bf16_models(tiny_model, fp8_base=True)
    assert err.value.code in ("train.fp8_needs_gpu", "train.fp8_unsupported")
    # what it does where it runs: the frozen weights in float8, the adapters untouched
    c, handle, _ = _models(tiny_model)
    store_unet_in_fp8(c.unet, "bf16", torch.device("cuda"))
    assert {p.dtype for p in c.unet.parameters() if not p.requires_grad} == {torch.float8_e4m3fn}
    assert {p.dtype for p in handle.unet_parameters()} == {torch.float32}


def _text_cache_fill(root: Path, tiny: Path, **values):
    """fill_text_cache on the tiny model's components for a two-image dataset; the trainer's text cache after it."""
    from loratrainer.train.family import family_for
    from loratrainer.train.text_cache import fill_text_cache

    data = root / "image"
    if not data.exists():
        make_dataset(data, {"1_x": 2})
    components, _, config = _models(tiny, train_data_dir=str(data), text_encoder_lr=0, **values)
    t = SimpleNamespace(config=config, components=components, text_encoder=components.text_encoder, accelerator=Accelerator(cpu=True),
                        family=family_for(components), text_cache=None, report=check_dataset(config))
    fill_text_cache(t)
    return t


@row("precision.cache_text_encoder_outputs")
def _cache_te(tmp_path, tiny_model):
    from loratrainer.train.family import text_states

    assert _text_cache_fill(tmp_path, tiny_model).text_cache is None
    t = _text_cache_fill(tmp_path, tiny_model, cache_text_encoder_outputs=True)
    captions = [s.caption for s in t.report.samples]
    assert all(c in t.text_cache for c in captions)  # every caption encoded before the first step

    class NotCalled(torch.nn.Module):
        final_layer_norm = torch.nn.LayerNorm(1)

        def forward(self, *args, **kwargs):
            raise AssertionError("the text encoder ran although its outputs were cached")

    t.text_encoder = NotCalled()  # the loop reads the cache and never runs the text encoder
    assert text_states(t, captions).shape[:2] == (2, 77)


@row("precision.cache_text_encoder_outputs_to_disk")
def _cache_te_disk(tmp_path, tiny_model):
    from loratrainer.train.text_cache import npz_path

    t = _text_cache_fill(tmp_path, tiny_model, cache_text_encoder_outputs=True)
    assert not any(npz_path(s.image_path).exists() for s in t.report.samples)
    t = _text_cache_fill(tmp_path, tiny_model, cache_text_encoder_outputs_to_disk=True)
    assert t.text_cache is not None and all(npz_path(s.image_path).exists() for s in t.report.samples)
    with np.load(npz_path(t.report.samples[0].image_path)) as npz:
        assert npz["hidden_state"].shape[0] == 77


@row("optimizer.text_encoder_2_lr")
def _te2_lr(tmp_path):
    from loratrainer.train.family import FAMILIES
    from loratrainer.train.optimizers import build_optimizer
    from loratrainer.train.setup import param_groups

    handle = _Handle()
    handle.te2 = [torch.nn.Parameter(torch.zeros(4))]
    handle.text_encoder_2_parameters = lambda: handle.te2

    def lrs(**values):
        config = cfg(optimizer="AdamW", **values)
        opt = build_optimizer(config, param_groups(handle, config, FAMILIES["sdxl"]))
        names = {id(handle.unet[0]): "unet", id(handle.te[0]): "te", id(handle.te2[0]): "te2"}
        return {names[id(g["params"][0])]: g["lr"] for g in opt.param_groups}

    assert lrs(text_encoder_lr=5e-5) == {"unet": 1e-4, "te": 5e-5, "te2": 5e-5}  # empty: the text encoder's rate
    assert lrs(text_encoder_lr=5e-5, text_encoder_2_lr=2e-5) == {"unet": 1e-4, "te": 5e-5, "te2": 2e-5}
    assert lrs(text_encoder_2_lr=0) == {"unet": 1e-4, "te": 1e-4}  # 0: the second text encoder is not trained


@row("noise.zero_terminal_snr")
def _zero_terminal_snr(tmp_path, tiny_model):
    c, _, _ = _models(tiny_model)
    assert float(c.noise_scheduler.alphas_cumprod[-1]) > 1e-3
    c, _, _ = _models(tiny_model, zero_terminal_snr=True, v_parameterization=True)
    sched = c.noise_scheduler
    assert float(sched.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-9)  # the last step is pure noise
    assert sched.config.prediction_type == "v_prediction"
    latents, noise = torch.ones(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.allclose(noisy_latents(sched, latents, noise, torch.tensor([999]), NoiseSettings()), noise, atol=1e-5)


# -- seed: through entry.train_run, the trainer's own run function (below) ------------------------------------------


@row("training.seed")
def _seed(tmp_path, tiny_model, default_lora):
    assert _same(default_lora, _e2e(tmp_path / "b", tiny_model))  # a fixed seed reproduces the run
    assert not _same(default_lora, _e2e(tmp_path / "c", tiny_model, seed=43))


# -- the table's own checks -----------------------------------------------------------------------------------


def test_every_field_has_a_row_or_a_reason():
    fields = {s.path for s in field_specs()}
    listed = set(ROWS) | set(COVERED_ELSEWHERE) | set(NO_TRAINING_EFFECT)
    assert not fields - listed, f"settings with no row and no reason: {sorted(fields - listed)}"
    assert not listed - fields, f"rows for settings that do not exist: {sorted(listed - fields)}"
    assert not (set(ROWS) & set(NO_TRAINING_EFFECT)) and not (set(ROWS) & set(COVERED_ELSEWHERE))
    for path, test in COVERED_ELSEWHERE.items():
        file, name = test.split("::")
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, name, None)), f"{path}: {test} does not exist"


@pytest.mark.parametrize("path", sorted(ROWS))
def test_setting_takes_effect(path, tmp_path, request):
    check = ROWS[path]
    names = check.__code__.co_varnames[: check.__code__.co_argcount]
    check(*(tmp_path if n == "tmp_path" else request.getfixturevalue(n) for n in names))


# -- end to end on the tiny model -----------------------------------------------------------------------------


def _e2e(root: Path, tiny: Path, **values) -> dict[str, torch.Tensor]:
    """A whole run through entry.train_run (config -> build_trainer -> loop -> saver) in this process; the final LoRA."""
    from safetensors.torch import load_file

    from loratrainer.train.entry import train_run
    from loratrainer.train.run_context import RunContext

    data = root / "image"
    if not data.exists():
        for i in range(2):
            image = _noise_image(data / "2_thing" / f"{i}.png", (96, 64))
            make_caption(image, "red, square, shiny, big, tag five")
    if "reg_data_dir" in values and not Path(values["reg_data_dir"]).exists():
        make_dataset(values["reg_data_dir"], {"1_person": 4})
    base = {
        "pretrained_model_name_or_path": str(tiny), "train_data_dir": str(data), "output_dir": str(root / "out"),
        "max_resolution": "128,128", "min_bucket_reso": 64, "train_batch_size": 2, "epoch": 1, "optimizer": "AdamW",
        "mixed_precision": "no", "num_cpu_threads_per_process": 1, "seed": 42, "lr_scheduler": "constant",
        "learning_rate": 1e-3, "unet_lr": 1e-3, "text_encoder_lr": 1e-3, "cache_latents": False, "save_every_n_epochs": 0,
        "save_precision": "float",
    }
    config = cfg(**{**base, **values})
    run_dir = root / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    old = torch.get_num_threads()
    try:
        outcome = train_run(config, RunContext(run_dir), Accelerator(cpu=True))
    finally:
        torch.set_num_threads(old)
    assert outcome.status == "finished"
    return load_file(str(root / "out" / "last.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# A representative set, one or more from each settings group the loop reads (noise, loss, the dataset's captions
# and augmentation) plus the text encoder; the rows above cover every field at a lower level.
E2E_CHANGES = {
    "noise_offset": {"noise_offset": 0.1},
    "multires_noise": {"multires_noise_iterations": 4},
    "min_snr_gamma": {"min_snr_gamma": 1.0},
    "huber": {"loss_type": "huber", "huber_schedule": "constant"},
    "shuffle_caption": {"shuffle_caption": True},
    "caption_dropout": {"caption_dropout_rate": 0.5},
    "flip_aug": {"flip_aug": True},
    "color_aug": {"color_aug": True},
    "random_crop": {"random_crop": True},
    "clip_skip": {"clip_skip": 2},
}


@pytest.fixture(scope="module")
def default_lora(tmp_path_factory, tiny_model):
    return _e2e(tmp_path_factory.mktemp("e2e-default"), tiny_model)


@pytest.mark.parametrize("name", sorted(E2E_CHANGES))
def test_a_fixed_seed_run_differs_from_the_default_when_a_setting_changes(name, default_lora, tmp_path, tiny_model):
    changed = _e2e(tmp_path, tiny_model, **E2E_CHANGES[name])
    assert changed.keys() == default_lora.keys()
    assert all(torch.isfinite(v).all() for v in changed.values())
    assert not _same(changed, default_lora), f"{name} did not change the trained LoRA"


def test_prior_loss_weight_changes_a_run_with_regularisation_images(tmp_path, tiny_model):
    reg = str(tmp_path / "reg")
    one = _e2e(tmp_path / "a", tiny_model, reg_data_dir=reg)
    assert _same(one, _e2e(tmp_path / "b", tiny_model, reg_data_dir=reg))  # reproducible with reg images too
    assert not _same(one, _e2e(tmp_path / "c", tiny_model, reg_data_dir=reg, prior_loss_weight=0.1))
