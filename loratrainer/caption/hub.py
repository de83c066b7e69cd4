"""Finding a captioning model: a local folder, or a hub id from the Hugging Face cache or the network.

Offline is a normal way to work here (issue 6): a local folder never touches the network, and a hub id that
cannot be fetched becomes one message that says what to do instead of a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, TypeVar

from loratrainer.errors import UserError

T = TypeVar("T")

# "name" or "owner/name", as the hub spells repository ids; anything else is meant as a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def local_folder(model: str) -> Path | None:
    """The folder `model` names, None when it is a hub id; a path-like name that does not exist is an error."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.match(model):
        raise UserError(f"model folder {model} does not exist (or is not a folder)")
    return None


def offline_message(model: str, exc: BaseException) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "offline mode is on (HF_HUB_OFFLINE)" if offline else f"{type(exc).__name__}: {_first_line(exc)}"
    return (
        f"cannot load the model {model!r}: it is not a local folder and is not in the Hugging Face cache, and it "
        f"could not be downloaded ({why}). Download it once with network access (it is then cached), or point "
        f"--model / the model field at a local folder holding the model."
    )


def load(model: str, loader: Callable[[str], T]) -> T:
    """Call `loader(name_or_folder)` (e.g. a from_pretrained), turning 'cannot fetch it' into one UserError."""
    folder = local_folder(model)
    if folder is not None:
        try:
            return loader(str(folder))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the model in {folder}: {_first_line(exc)}") from exc
    try:
        return loader(model)
    except OSError as exc:  # transformers and huggingface_hub report "not found" and "no network" as OSError
        raise UserError(offline_message(model, exc)) from exc


def pick_device(device: str | None) -> str:
    """The GPU when there is one (issue 6), else the CPU; an explicit choice is kept."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
