"""Masked loss and alpha masks (issue 23), as sd-scripts defines them (library/custom_train_functions.py
apply_masked_loss, library/train_util.py ControlNetDataset and alpha_mask): the mask's weights in the loss, the
mask following its image's resize, crop and flip, the dataset check naming missing and mismatched masks, the
latent cache keeping masks beside latents, the Kohya GUI keys, and a tiny SD1.5 run."""

from __future__ import annotations

from tests.test_train_support import tiny_model  # noqa: F401  (first: hides a broken torchvision)

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from loratrainer.config import TrainingConfig, with_values
from loratrainer.config.kohya import export_kohya, import_kohya
from loratrainer.data.check import check_dataset
from loratrainer.train.dataset import TrainDataset, collate
from loratrainer.config import LossSettings
from loratrainer.train.loss import diffusion_loss
from tests.datasets import make_caption

KOHYA_TESTS = Path(__file__).parent / "fixtures" / "kohya_ss" / "test" / "config"
KEYS = [(0, 1, b, 0, 0) for b in range(24)]  # (sample, epoch, batch, slot, use): independent flip/crop draws


def cfg(**values) -> TrainingConfig:
    return with_values(TrainingConfig(), {"min_bucket_reso": 64, "max_resolution": "128,128", **values})


def test_loss_is_the_mean_of_the_loss_times_the_area_resized_mask_computed_by_hand():
    torch.manual_seed(0)
    pred, target = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 64, 64)
    mask[0, :, :36] = 1.0  # latent columns 0-3 fully white, column 4 half (pixels 32-35 of 32-39), the rest black
    loss = diffusion_loss(pred, target, torch.ones(1), LossSettings(), masks=mask)
    total = 0.0
    for c in range(4):
        for y in range(8):
            for x in range(8):
                weight = 1.0 if x < 4 else 0.5 if x == 4 else 0.0
                total += weight * float(pred[0, c, y, x] - target[0, c, y, x]) ** 2
    # sd-scripts divides by every element (loss.mean), not by the mask's sum
    assert float(loss) == pytest.approx(total / (4 * 8 * 8), rel=1e-6)
    assert float(diffusion_loss(pred, target, torch.ones(1), LossSettings(), masks=torch.ones(1, 64, 64))) == pytest.approx(
        float(((pred - target) ** 2).mean()), rel=1e-6)
    assert float(diffusion_loss(pred, target, torch.ones(1), LossSettings(), masks=torch.zeros(1, 64, 64))) == 0.0


def _pair(root: Path, masks: Path | None, size=(96, 64), mask_size=None) -> Path:
    """A training image red on its left half, black elsewhere, and (optionally) its mask: white where it is red."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2] = (255, 0, 0)
    image = root / "2_thing" / "a.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(image)
    make_caption(image, "thing")
    if masks is not None:
        masks.mkdir(parents=True, exist_ok=True)
        mw, mh = mask_size or size
        mask = np.zeros((mh, mw), np.uint8)
        mask[:, : mw // 2] = 255
        Image.fromarray(mask, "L").convert("RGB").save(masks / "a.jpg" if mask_size else masks / "a.png")
    return image


def _items(config: TrainingConfig) -> list[dict]:
    report = check_dataset(config)
    assert report.ok, report.format_text()
    ds = TrainDataset(report.samples, config, seed=7)
    return [ds[key] for key in KEYS]


def _red(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels[0] + 1) / 2  # (H, W): the image tensor's red in [0, 1], which is the mask's pattern


def test_the_mask_follows_its_image_through_bucket_resize_random_crop_and_flip(tmp_path):
    _pair(tmp_path / "img", tmp_path / "masks", size=(192, 128))  # resized to 96x64 and cropped to 64x64: 32 columns to crop
    config = cfg(train_data_dir=str(tmp_path / "img"), masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"),
                 cache_latents=False, flip_aug=True, random_crop=True, max_resolution="64,64", bucket_no_upscale=False)
    items = _items(config)
    flipped = 0
    for item in items:
        mask, red = item["mask"], _red(item["pixels"])
        assert mask.shape == (64, 64) and mask.max() == 1.0 and mask.min() == 0.0
        # the same weights on the same pixels (resampled alike), whatever the crop and flip
        assert torch.allclose(mask, red, atol=1e-6)
        flipped += bool(red[:, -1].max() > 0.5)
    assert 3 <= flipped <= 21  # mirrored about half of the time, and its mask with it
    assert len({round(float(_red(it["pixels"]).sum())) for it in items}) > 3  # the random crops differ
    batch = collate(items[:2])
    assert batch["masks"].shape == (2, 64, 64)


def test_alpha_mask_is_the_images_own_alpha(tmp_path):
    image = tmp_path / "img" / "1_x" / "a.png"
    image.parent.mkdir(parents=True)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :16, 3] = 255
    rgba[:, 16:32, 3] = 128
    Image.fromarray(rgba, "RGBA").save(image)
    make_caption(image, "x")
    item = _items(cfg(train_data_dir=str(tmp_path / "img"), alpha_mask=True, cache_latents=False))[0]
    assert torch.all(item["mask"][:, :16] == 1.0) and torch.allclose(item["mask"][:, 16:32], torch.tensor(128 / 255))
    assert torch.all(item["mask"][:, 32:] == 0.0)
    plain = tmp_path / "rgb" / "1_x" / "b.png"
    plain.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(plain)  # no alpha channel: trained fully (sd-scripts: ones)
    assert torch.all(_items(cfg(train_data_dir=str(tmp_path / "rgb"), alpha_mask=True, cache_latents=False))[0]["mask"] == 1.0)


def test_the_dataset_check_names_missing_and_mismatched_masks(tmp_path):
    _pair(tmp_path / "img", tmp_path / "masks", mask_size=(48, 32))
    extra = tmp_path / "img" / "2_thing" / "b.png"
    Image.new("RGB", (64, 64)).save(extra)
    Image.new("RGB", (64, 64)).save(tmp_path / "masks" / "stray.png")
    config = cfg(train_data_dir=str(tmp_path / "img"), masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"))
    report = check_dataset(config)
    assert not report.ok
    by_code = {p.code: p for p in report.problems if p.code.startswith("mask.")}
    assert set(by_code) == {"mask.size", "mask.missing", "mask.extra"}
    assert by_code["mask.extra"].severity == "warning" and by_code["mask.extra"].message.endswith(": stray.png")
    assert "a.jpg is 48x32 but the image is 96x64" in by_code["mask.size"].message
    assert by_code["mask.size"].path.endswith("a.png")
    assert by_code["mask.missing"].message.startswith("1 image(s) have no mask in the dataset.conditioning_data_dir") and "b.png" in by_code["mask.missing"].message
    no_folder = check_dataset(cfg(train_data_dir=str(tmp_path / "img"), masked_loss=True))
    assert [p.message for p in no_folder.problems if p.code == "mask.no_folder"] == [
        "dataset.masked_loss is on but no dataset.conditioning_data_dir is set: choose the folder with one mask image per training image"]
    # with alpha_mask the folder is not needed (sd-scripts weights by the alpha then)
    assert check_dataset(cfg(train_data_dir=str(tmp_path / "img"), masked_loss=True, alpha_mask=True)).ok


def test_kohya_gui_masked_loss_key_imports_and_exports():
    # the Kohya GUI's own test config: masked_loss and its dataset TOML come over; the masks are named in that TOML
    # (conditioning_data_dir per subset), which the dataset TOML reader refuses by key (tests/test_dataset_config.py)
    config, report = import_kohya(json.loads((KOHYA_TESTS / "locon-AdamW8bit-masked_loss-toml.json").read_text("utf-8-sig")))
    assert config.dataset.masked_loss is True and config.dataset.conditioning_data_dir == ""
    assert report.keys("unsupported") == [] and config.folders.dataset_config.endswith("dataset-masked_loss.toml")
    with pytest.raises(Exception, match="DreamBooth config"):
        import_kohya(json.loads((KOHYA_TESTS / "dreambooth-AdamW8bit-masked_loss-toml.json").read_text("utf-8-sig")))
    # sd-scripts' flags with no Kohya GUI field travel in additional_parameters, both ways
    config, report = import_kohya({"LoRA_type": "Standard", "masked_loss": True,
                                   "additional_parameters": "--conditioning_data_dir /data/masks --alpha_mask"})
    assert (config.dataset.masked_loss, config.dataset.conditioning_data_dir, config.dataset.alpha_mask) == (True, "/data/masks", True)
    out, _ = export_kohya(config)
    assert out["masked_loss"] is True and out["additional_parameters"] == "--alpha_mask --conditioning_data_dir /data/masks"
    assert import_kohya(out)[0].dataset == config.dataset


def _run(root: Path, tiny: Path, mask_value: int, **values) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from loratrainer.train.entry import train_run
    from loratrainer.train.run_context import RunContext

    for i in range(2):
        image = root / "image" / "2_thing" / f"{i}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(image)
        make_caption(image, "thing")
        (root / "masks").mkdir(exist_ok=True)
        mask = np.zeros((64, 96), np.uint8)
        mask[:, :48] = mask_value
        Image.fromarray(mask, "L").save(root / "masks" / f"{i}.png")
    config = cfg(pretrained_model_name_or_path=str(tiny), train_data_dir=str(root / "image"), output_dir=str(root / "out"),
                 train_batch_size=2, epoch=1, optimizer="AdamW", mixed_precision="no", num_cpu_threads_per_process=1, seed=42,
                 learning_rate=1e-3, unet_lr=1e-3, text_encoder_lr=1e-3, save_every_n_epochs=0, save_precision="float",
                 masked_loss=True, conditioning_data_dir=str(root / "masks"), **values)
    (root / "run").mkdir(parents=True, exist_ok=True)
    old = torch.get_num_threads()
    try:
        outcome = train_run(config, RunContext(root / "run"), Accelerator(cpu=True))
    finally:
        torch.set_num_threads(old)
    assert outcome.status == "finished" and outcome.step == 2
    return load_file(str(root / "out" / "last.safetensors"))


def test_a_tiny_sd15_run_trains_only_through_the_mask(tmp_path, tiny_model):  # noqa: F811
    # black masks: every pixel's loss weighs 0, so no gradient reaches the LoRA and its up weights stay at their zeros
    # (cached latents, on disk: each npz holds sd-scripts' alpha_mask beside the latents)
    black = _run(tmp_path / "black", tiny_model, 0, cache_latents=True, cache_latents_to_disk=True)
    ups = [k for k in black if "lora_up" in k]
    assert ups and all(torch.count_nonzero(black[k]) == 0 for k in ups)
    npz_files = sorted((tmp_path / "black" / "image" / "2_thing").glob("*_sd.npz"))
    assert len(npz_files) == 2
    with np.load(npz_files[0]) as npz:
        assert npz["alpha_mask"].shape == (64, 64) and float(npz["alpha_mask"].max()) == 0.0
    # half-white masks (pixels, no cache): the run learns
    half = _run(tmp_path / "half", tiny_model, 255, cache_latents=False)
    assert all(torch.isfinite(v).all() for v in half.values())
    assert any(torch.count_nonzero(half[k]) for k in ups)
