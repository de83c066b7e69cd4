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
from loratrainer.messages import Msg, define

T = TypeVar("T")

define({
    "hub.no_folder": "model folder {model} does not exist (or is not a folder)",
    "hub.why_offline_mode": "offline mode is on (HF_HUB_OFFLINE)",
    "hub.why_unreachable": "the Hugging Face hub cannot be reached",
    "hub.why_error": "{error}",
    "hub.offline": (
        "cannot load the model {model!r}: it is not a local folder and is not in the Hugging Face cache, and it "
        "could not be downloaded ({why}). Download it once with network access (it is then cached), or point "
        "--model / the model field at a local folder holding the model."
    ),
    "hub.folder_unloadable": "cannot load the model in {folder}: {error}",
    "hub.damaged_cache": (
        "cannot load the model {model!r} from the Hugging Face cache ({error}): delete it from the "
        "cache (`hf cache rm model/{model}`) and download it again, or point --model at a local folder"
    ),
    "hub.bad_device": "device {device!r} is not a device: use cuda, cuda:1 or cpu",
    "hub.no_cuda": ("device {device!r}: no CUDA GPU can be used here (torch {torch}); "
                    "use cpu, or leave the device out to use the GPU when there is one"),
    "hub.gpu_index": "device {device!r}: there are only {count} CUDA GPU(s), numbered from 0",
})

# "name" or "owner/name", as the hub spells repository ids; anything else is meant as a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def local_folder(model: str) -> Path | None:
    """The folder `model` names, None when it is a hub id; a path-like name that does not exist is an error."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.match(model):
        raise UserError(Msg.of("hub.no_folder", model=model))
    return None


def _offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def offline_message(model: str, exc: BaseException | None) -> Msg:
    if _offline_mode():
        why = Msg.of("hub.why_offline_mode")
    elif exc is None:
        why = Msg.of("hub.why_unreachable")
    else:
        why = Msg.of("hub.why_error", error=f"{type(exc).__name__}: {first_line(exc)}")
    return Msg.of("hub.offline", model=model, why=why)


def hub_reachable(timeout: float = 5.0) -> bool:
    """One quick request to the hub. Without it, an offline machine sits through huggingface_hub's retries
    (minutes, dozens of "Retrying in 8s" lines per file) before the message this module exists to give."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # any transport failure (DNS, refused, timeout, proxy): not reachable
        return False
    return True  # any HTTP answer, even an error status, means the network works


def load(model: str, loader: Callable[..., T]) -> T:
    """Call `loader(name_or_folder)` (a from_pretrained, or an hf_hub_download that accepts local_files_only),
    turning 'cannot fetch it' into one UserError.

    A hub id is tried from the cache first (no network at all), then downloaded only when the hub answers.
    """
    folder = local_folder(model)
    if folder is not None:
        try:
            return loader(str(folder))
        except Exception as exc:  # a folder the user chose: whatever breaks (a damaged file, bad JSON) is theirs to fix
            raise UserError(Msg.of("hub.folder_unloadable", folder=str(folder), error=first_line(exc))) from exc
    try:
        return loader(model, local_files_only=True)
    except OSError:  # not (completely) in the cache: transformers and huggingface_hub say so with an OSError
        pass
    except Exception as exc:  # in the cache but unreadable (e.g. a damaged weights file)
        raise UserError(damaged_cache_message(model, exc)) from exc
    if _offline_mode() or not hub_reachable():
        raise UserError(offline_message(model, None))
    try:
        return loader(model)
    except OSError as exc:  # "no such repository", or the network went away meanwhile
        raise UserError(offline_message(model, exc)) from exc
    except Exception as exc:
        raise UserError(damaged_cache_message(model, exc)) from exc


def damaged_cache_message(model: str, exc: BaseException) -> Msg:
    return Msg.of("hub.damaged_cache", model=model, error=first_line(exc))


def pick_device(device: str | None) -> str:
    """The GPU when there is one (issue 6), else the CPU; an explicit choice is checked, so that a typo or a
    machine without CUDA is one message rather than torch's assertion from deep inside the model's .to()."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(Msg.of("hub.bad_device", device=device)) from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(Msg.of("hub.no_cuda", device=device, torch=torch.__version__))
        if chosen.index is not None and chosen.index >= count:
            raise UserError(Msg.of("hub.gpu_index", device=device, count=count))
    return device


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
