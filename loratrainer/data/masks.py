"""Loss masks as sd-scripts reads them (masked_loss, conditioning_data_dir, alpha_mask; library/train_util.py).

A mask is an image in the mask folder with the training image's name (any image extension: sd-scripts'
glob_images(conditioning_data_dir, basename)); its red channel is the weight, 0 (black) to 1 (white). With
alpha_mask the weight is the image's own alpha. The dataset check names every image whose mask is missing or
whose size differs from its image (sd-scripts asserts both before training); train/masks.py turns a mask into
the loss weight at latent resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from loratrainer.config import TrainingConfig
from loratrainer.data.folders import shown_names
from loratrainer.data.images import IMAGE_EXTENSIONS, ImageError, load_alpha, load_image, probe_image
from loratrainer.data.problems import Problem
from loratrainer.data.samples import TrainSample
from loratrainer.messages import Label, Msg, define

define({
    "mask.no_folder": "{masked} is on but no {folder} is set: choose the folder with one mask image per training image",
    "mask.folder_missing": "the {folder} does not exist: choose the folder with one mask image per training image",
    "mask.missing": "{n} image(s) have no mask in the {folder} (a mask has the image's name, e.g. {example}): {names}",
    "mask.size": "its mask {mask} is {mw}x{mh} but the image is {w}x{h}: a mask must have its image's size",
    "mask.unreadable": "its mask {mask} cannot be used: {reason}",
    "mask.extra": "{n} mask(s) in the {folder} belong to no training image and are not used: {names}",
})


def uses_masks(config: TrainingConfig) -> bool:
    return config.dataset.masked_loss or config.dataset.alpha_mask


def find_mask(folder: str | Path, image: Path) -> Path | None:
    """The mask of `image`: the file in `folder` with the image's name and an image extension."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (ext, ext.upper()):
            path = Path(folder) / (image.stem + candidate)
            if path.is_file():
                return path
    return None


def mask_problems(config: TrainingConfig, samples: Sequence[TrainSample]) -> list[Problem]:
    """Errors for masked_loss: no mask folder (unless alpha_mask), images without a mask, masks of another size
    (sd-scripts' asserts). alpha_mask needs nothing: an image without alpha trains fully (sd-scripts: ones)."""
    d = config.dataset
    if not d.masked_loss:
        return []
    labels = {"masked": Label("dataset.masked_loss"), "folder": Label("dataset.conditioning_data_dir")}
    if not d.conditioning_data_dir.strip():
        if d.alpha_mask:  # sd-scripts: --masked_loss --alpha_mask without a conditioning folder weights by the alpha
            return []
        return [Problem.at("dataset.conditioning_data_dir", "error", Msg.of("mask.no_folder", **labels))]
    folder = Path(d.conditioning_data_dir)
    if not folder.is_dir():
        return [Problem.at(folder, "error", Msg.of("mask.folder_missing", folder=labels["folder"]))]
    problems, missing = [], []
    for sample in samples:
        mask = find_mask(folder, sample.image_path)
        if mask is None:
            missing.append(sample.image_path)
            continue
        try:
            info = probe_image(mask, check_end=False)
        except ImageError as exc:
            problems.append(Problem.at(sample.image_path, "error", Msg.of("mask.unreadable", mask=mask.name, reason=exc.reason)))
            continue
        if info.size != sample.size:
            (mw, mh), (w, h) = info.size, sample.size
            problems.append(Problem.at(sample.image_path, "error", Msg.of("mask.size", mask=mask.name, mw=mw, mh=mh, w=w, h=h)))
    # sd-scripts refuses extra masks too; here they change nothing, so they are named, not refused
    stems = {s.image_path.stem for s in samples}
    extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.stem not in stems)
    if extra:
        problems.append(Problem.at(folder, "warning", Msg.of("mask.extra", n=len(extra), folder=labels["folder"], names=shown_names(extra, 10))))
    if missing:
        names = shown_names([p.name for p in missing], 10)
        problems.append(Problem.at(folder, "error", Msg.of("mask.missing", n=len(missing), folder=labels["folder"],
                                                           example=str(folder / missing[0].name), names=names)))
    return problems


def load_mask(sample: TrainSample, config: TrainingConfig) -> Image.Image | None:
    """The sample's full-size upright mask as an "L" image (255 = full weight), or None when masks are off.
    masked_loss: the mask file's red channel (sd-scripts uses channel 0 of the RGB mask; a transparent mask pixel
    counts as black); else alpha_mask: the image's alpha."""
    d = config.dataset
    if d.masked_loss and d.conditioning_data_dir.strip():
        path = find_mask(d.conditioning_data_dir, sample.image_path)
        if path is None:  # the check refuses this before training; here it is a plain error, not a silent full weight
            raise FileNotFoundError(f"no mask for {sample.image_path} in {d.conditioning_data_dir}")
        return load_image(path, "#000000").getchannel("R")
    if d.alpha_mask:
        return load_alpha(sample.image_path)
    return None
