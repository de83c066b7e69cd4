"""Caption handling per step, as Kohya does it: dropout, tag dropout, shuffle after the kept tokens."""

from __future__ import annotations

import random
from dataclasses import dataclass

from loratrainer.config import DatasetSettings


@dataclass(frozen=True)
class CaptionRules:
    shuffle: bool = False
    keep_tokens: int = 0
    dropout_rate: float = 0.0
    dropout_every_n_epochs: int = 0
    tag_dropout_rate: float = 0.0

    @classmethod
    def from_settings(cls, d: DatasetSettings) -> "CaptionRules":
        return cls(d.shuffle_caption, d.keep_tokens, d.caption_dropout_rate, d.caption_dropout_every_n_epochs, d.caption_tag_dropout_rate)

    @property
    def is_static(self) -> bool:
        """The same caption text every step: its text-encoder output can be cached."""
        return not (self.shuffle or self.dropout_rate or self.dropout_every_n_epochs or self.tag_dropout_rate)


def process_caption(caption: str, rules: CaptionRules, epoch: int, rng: random.Random) -> str:
    """The caption a sample is trained with this step (sd-scripts' BaseDataset.process_caption)."""
    if rules.dropout_every_n_epochs and epoch % rules.dropout_every_n_epochs == 0:
        return ""
    if rules.dropout_rate and rng.random() < rules.dropout_rate:
        return ""
    if not (rules.shuffle or rules.tag_dropout_rate):
        return caption
    tags = [t.strip() for t in caption.strip().split(",")]
    fixed, flex = tags[: rules.keep_tokens], tags[rules.keep_tokens :]
    if rules.tag_dropout_rate:
        flex = [t for t in flex if rng.random() >= rules.tag_dropout_rate]
    if rules.shuffle:
        rng.shuffle(flex)
    return ", ".join(t for t in fixed + flex if t)
