"""Caption handling per step, as Kohya does it: dropout, tag dropout, shuffle after the kept tokens. The settings are
the config's own `dataset` group (DatasetSettings), read by their names."""

from __future__ import annotations

import random

from loratrainer.config import DatasetSettings


# The dataset settings that change a caption from step to step.
CHANGING = ("shuffle_caption", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate")


def captions_static(d: DatasetSettings) -> bool:
    """The same caption text every step: its text-encoder output can be cached."""
    return not any(getattr(d, name) for name in CHANGING)


def process_caption(caption: str, d: DatasetSettings, epoch: int, rng: random.Random) -> str:
    """The caption a sample is trained with this step (sd-scripts' BaseDataset.process_caption)."""
    if d.caption_dropout_every_n_epochs and epoch % d.caption_dropout_every_n_epochs == 0:
        return ""
    if d.caption_dropout_rate and rng.random() < d.caption_dropout_rate:
        return ""
    if not (d.shuffle_caption or d.caption_tag_dropout_rate):
        return caption
    tags = [t.strip() for t in caption.strip().split(",")]
    fixed, flex = tags[: d.keep_tokens], tags[d.keep_tokens :]
    if d.caption_tag_dropout_rate:
        flex = [t for t in flex if rng.random() >= d.caption_tag_dropout_rate]
    if d.shuffle_caption:
        rng.shuffle(flex)
    return ", ".join(t for t in fixed + flex if t)
