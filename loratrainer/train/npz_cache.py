"""The .npz files our caches keep next to the images (latents, text encoder outputs): written atomically with our
fingerprint, and never over a file of the same name that another tool (sd-scripts) wrote."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from loratrainer.files import atomic_write_with
from loratrainer.messages import Msg
from loratrainer.run import notes as _notes  # noqa: F401  the codes of the warnings below (the page must know them)

log = logging.getLogger("loratrainer.train")
FINGERPRINT_KEY = "loratrainer_fingerprint"


def write_cache(path: Path, arrays: dict[str, np.ndarray], fp: str, what: str) -> None:
    """Write `arrays` plus the fingerprint `fp` to `path` (`what`: "latents" or "text", run/notes.py's train.cache.*). A file there that we did not write is left untouched, and
    a folder we cannot write to (a read-only image folder) only costs the cache: the run goes on with it in memory."""
    if path.exists() and not is_ours(path):
        log.warning("%s", Msg.of("train.cache_not_ours", path=str(path), what=Msg.of(f"train.cache.{what}")))
        return
    arrays = {**arrays, FINGERPRINT_KEY: np.array(fp)}

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # mypy takes a key for savez's allow_pickle flag

    try:
        atomic_write_with(path, writer)
    except OSError as exc:
        log.warning("%s", Msg.of("train.cache_not_written", what=Msg.of(f"train.cache.{what}"), path=str(path), error=str(exc)))


def is_ours(path: Path) -> bool:
    try:
        with np.load(path) as npz:
            return FINGERPRINT_KEY in npz
    except (OSError, ValueError):
        return False
