"""precision.cache_text_encoder_outputs (and _to_disk): every caption encoded once before training, for a LoRA
that trains the UNet only with captions that never change (sd-scripts' --cache_text_encoder_outputs).

sd-scripts refuses it when a text encoder trains or when captions change per step (shuffle, dropout, tag dropout:
sdxl_train_network.py assert_extra_args); so do we, in one sentence before any model loads. The outputs go into
the run's TextCache (train/text.py), which the loop reads; with _to_disk also into `<image stem>_te_outputs.npz`
beside each image, under Kohya's keys (SDXL: hidden_state1, hidden_state2, pool2, library/strategy_sdxl.py;
SD1.5: hidden_state) plus `loratrainer_fingerprint` (the caption, the model and the token settings). A file
without our fingerprint (Kohya's own) is never read or overwritten: its settings are unknown. After caching, the
text encoders leave the GPU (as sd-scripts moves them to the CPU); sampling brings them back for its round.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from loratrainer.config import TrainingConfig
from loratrainer.errors import UserError
from loratrainer.messages import Label, Msg
from loratrainer.run import outcomes as _outcomes  # noqa: F401  train.text_cache_*, the errors below (the page must know them)
from loratrainer.train.captions import CHANGING, captions_static
from loratrainer.train.npz_cache import FINGERPRINT_KEY, write_cache

log = logging.getLogger("loratrainer.train")
SUFFIX = "_te_outputs.npz"  # sd-scripts' TEXT_ENCODER_OUTPUTS_NPZ_SUFFIX


def wanted(config: TrainingConfig) -> bool:
    p = config.precision
    return p.cache_text_encoder_outputs or p.cache_text_encoder_outputs_to_disk  # sd-scripts: to_disk implies caching


def cacheable(config: TrainingConfig) -> bool:
    """No text encoder trains and every caption is the same each step: what caching needs."""
    te2 = config.optimizer.text_encoder_2_lr
    trains = config.trains_text_encoder or (te2 is not None and te2 > 0)
    return not trains and captions_static(config.dataset)


def check_text_cache_allowed(config: TrainingConfig) -> None:
    if not wanted(config):
        return
    cache = Label("precision.cache_text_encoder_outputs")
    o = config.optimizer
    te2 = o.text_encoder_2_lr
    if config.trains_text_encoder or (te2 is not None and te2 > 0):
        raise UserError(Msg.of("train.text_cache_needs_frozen_text_encoder", cache=cache, te_lr=Label("optimizer.text_encoder_lr"),
                               te2_lr=Label("optimizer.text_encoder_2_lr")))
    for setting in CHANGING:
        if getattr(config.dataset, setting):
            raise UserError(Msg.of("train.text_cache_needs_static_captions", cache=cache, setting=Label(f"dataset.{setting}")))


def npz_path(image_path: Path) -> Path:
    return Path(image_path).with_name(Path(image_path).stem + SUFFIX)


def fingerprint(t, caption: str) -> str:
    c, m = t.components, t.config.model
    text = f"{t.family.name}|{c.model_name}|{c.model_hash}|{m.max_token_length}|{m.clip_skip}|{caption}"
    return hashlib.sha256(text.encode()).hexdigest()


def fill_text_cache(t) -> None:
    """Encode every training caption now (reusing our disk files), then move the text encoders off the GPU."""
    if not wanted(t.config):
        return
    from loratrainer.train.text import TextCache

    if t.text_cache is None:
        t.text_cache = TextCache()
    keys, to_disk = t.family.cache_keys, t.config.precision.cache_text_encoder_outputs_to_disk
    samples = t.report.samples + t.report.validation  # the validation captions too: the encoders leave the GPU below
    if to_disk:
        for sample in samples:
            state = _read(npz_path(sample.image_path), fingerprint(t, sample.caption), keys)
            if state is not None:
                device = t.accelerator.device
                t.text_cache.put(sample.caption, tuple(r.to(device) for r in state) if isinstance(state, tuple) else state.to(device))
    todo = list(dict.fromkeys(s.caption for s in samples if s.caption not in t.text_cache))
    batch = max(1, t.config.training.train_batch_size)
    with torch.no_grad(), t.accelerator.autocast():
        for i in range(0, len(todo), batch):
            out = t.family.encode(t, todo[i : i + batch])
            out = out if isinstance(out, tuple) else (out,)
            for j, caption in enumerate(todo[i : i + batch]):
                t.text_cache.put(caption, _row(out, j))
    if to_disk and t.accelerator.is_local_main_process:
        for sample in samples:
            _write(npz_path(sample.image_path), t.text_cache.get([sample.caption], None), fingerprint(t, sample.caption), keys)
    log.info("text encoder outputs cached for %d captions (%d encoded now)", len({s.caption for s in samples}), len(todo))
    if t.accelerator.device.type != "cpu":
        for name in t.family.text_encoders:
            getattr(t.components, name).to("cpu")
        torch.cuda.empty_cache()


def _row(out: tuple, j: int):
    """One caption's outputs, on the CPU-independent form the cache keeps (a tensor, or a tuple for SDXL)."""
    rows = tuple(o[j].detach() for o in out)
    return rows if len(rows) > 1 else rows[0]


def _read(path: Path, fp: str, keys: tuple[str, ...]):
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            if FINGERPRINT_KEY not in npz or str(npz[FINGERPRINT_KEY]) != fp or any(k not in npz for k in keys):
                return None
            rows = tuple(torch.from_numpy(npz[k]) for k in keys)
    except (OSError, ValueError, KeyError):
        return None
    return rows if len(rows) > 1 else rows[0]


def _write(path: Path, state, fp: str, keys: tuple[str, ...]) -> None:
    rows = state if isinstance(state, tuple) else (state,)
    arrays = {k: r[0].float().cpu().numpy() for k, r in zip(keys, rows)}  # get() stacked a batch of one
    write_cache(path, arrays, fp, "text")
