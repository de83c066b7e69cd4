"""Checks before launch of what the run reads and writes by name: the model files and the file names it will
write (docs/reliability.md, "Before a run starts"). Without them a wrong VAE surfaced after the model had loaded
as a bare IndexError, and a long output name failed at the first save after a whole epoch.

No torch here (the GUI calls these through launch.start.preflight): model files are judged by their safetensors
header, their pickle/zip signature or their diffusers layout, never loaded.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loratrainer.config import TrainingConfig
from loratrainer.config.optimizer_table import optimizer_refusal
from loratrainer.messages import Label, Msg, define

define({
    "inputs.missing": "{setting}: {path} does not exist: choose an existing file or folder",
    "inputs.not_a_model": "{setting}: {path} is not a model file ({detail}): choose a .safetensors or .ckpt file",
    "inputs.wrong_family": "{setting}: {path} is {found}, not {wanted}",
    "inputs.not_diffusers": "{setting}: {path} is a folder but not a diffusers model (no model_index.json or unet/ inside): choose the model's file or the folder that holds model_index.json",
    "inputs.wrong_width": "{setting}: {path} is {family} model (cross-attention width {width}); choose an SD1.5 or SDXL model",
    "inputs.family_mismatch": "{setting} is {wanted}, but {path} is {found} model: set {setting} to auto (read from the model) or choose {wanted} model",
    "inputs.tokenizer_mismatch": (
        "{setting}: the tokenizer ({tokenizer}) has {tokens} tokens but the model's text encoder has only {embeddings} "
        "embeddings, so training would fail at its first step: use the tokenizer files that came with the model"
    ),
    "inputs.name_too_long": (
        "{setting}: the file name {example} would be {size} bytes, more than the {limit} bytes the file system allows "
        "in {folder}: shorten {setting} (at most {fits} bytes in UTF-8; a Korean character takes 3)"
    ),
    "inputs.name_reserved": "{setting}: {name} is a reserved device name on Windows, where the files may be copied: choose another name",
    "inputs.name_trailing": "{setting}: a name ending in a dot or a space cannot be used on Windows: remove it",
    "inputs.name_control": "{setting}: the name holds a control character (such as a tab or a line break): remove it",
})

WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
# The longest names the run writes, by suffix: epoch/step/interrupted LoRA files (Kohya's names, launch.run_files),
# their "-state" folders and "_diffusers" copy, and the hidden temporary file of an atomic write, which wraps the
# longest one as `.<name>.XXXXXXXX.partial` (files.atomic_write_with). `_99` leaves room for existing_output=rename.
_SUFFIXES = ("-step00000000.safetensors", "-interrupted-99.safetensors", "-000000-state", "_diffusers")
_PARTIAL_WRAP = len(".") + len(".XXXXXXXX.partial")
_RENAME_ROOM = len("_99")
_RUN_FOLDER_SUFFIX = "_20260101-000000-99"  # launch.start.create_run's <name>_<stamp>-<n>


def check_inputs(config: TrainingConfig) -> Msg | None:
    """The first problem with the run's model files, output name or optimizer, or None."""
    for check in (check_output_name, check_optimizer_source, check_model_files):
        problem = check(config)
        if problem is not None:
            return problem
    return None


# -- names the run writes ------------------------------------------------------------------------------------


def check_output_name(config: TrainingConfig) -> Msg | None:
    name = config.folders.output_name
    setting = Label("folders.output_name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return Msg.of("inputs.name_control", setting=setting)
    if name.endswith((".", " ")):
        return Msg.of("inputs.name_trailing", setting=setting)
    if name.split(".")[0].strip().upper() in WINDOWS_RESERVED:
        return Msg.of("inputs.name_reserved", setting=setting, name=name)
    longest = max((name + s for s in _SUFFIXES), key=lambda n: len(os.fsencode(n)))
    written = [(Path(config.folders.output_dir or "."), longest, _PARTIAL_WRAP + _RENAME_ROOM)]
    from loratrainer.run.files import logging_root

    written.append((logging_root(config), name + _RUN_FOLDER_SUFFIX, _RENAME_ROOM))
    for folder, example, extra in written:
        limit = _name_max(folder)
        size = len(os.fsencode(example)) + extra
        if size > limit:
            fits = len(os.fsencode(name)) - (size - limit)
            return Msg.of("inputs.name_too_long", setting=setting, example=example, size=size, limit=limit,
                          folder=str(folder), fits=max(fits, 1))
    return None


def _name_max(folder: Path) -> int:
    """The file system's longest file name in bytes (255 on ext4, tmpfs, NTFS, APFS) at the nearest existing folder."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if sys.platform == "win32":
        return 255  # NTFS, exFAT and FAT32 long names alike; Windows has no pathconf
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


# -- the optimizer -------------------------------------------------------------------------------------------


def check_optimizer_source(config: TrainingConfig) -> Msg | None:
    return optimizer_refusal(config.optimizer.optimizer)


# -- model files -----------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
_WANTED = {
    "model.pretrained_model_name_or_path": ({"sd1", "sdxl"}, "an SD1.5 or SDXL model"),
    "model.vae": ({"vae", "sd1", "sdxl"}, "a VAE"),  # sd-scripts also takes the VAE of a whole checkpoint
    "network.network_weights": ({"lora"}, "a LoRA file"),
}
_FAMILY_WORDS = {
    "sdxl": "an SDXL model", "sd2": "a Stable Diffusion 2.x model", "sd1-inpainting": "an SD1.5 inpainting model",
    "sd3-or-flux": "an SD3 or Flux model", "lora": "a LoRA file", "vae": "a VAE on its own", "sd1": "an SD1.5 model",
    "diffusers-component": "a single diffusers component file", "unknown": "not a Stable Diffusion file this program recognises",
}


@dataclass(frozen=True)
class _Shape:
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


def check_model_files(config: TrainingConfig) -> Msg | None:
    """The base model, the VAE and network_weights: they exist and are what they are set as."""
    for setting, value in (("model.pretrained_model_name_or_path", config.model.pretrained_model_name_or_path),
                           ("model.vae", config.model.vae), ("network.network_weights", config.network.network_weights)):
        value = value.strip()
        if value:
            problem = _check_model_path(setting, value)
            if problem is not None:
                return problem
    return None


def missing_model_path(setting: str, value: str) -> Msg | None:
    """The one rule for whether a model setting (base model, VAE, network_weights) names something: a path that
    exists or, for the base model and the VAE, a Hugging Face id (downloaded, or found in the cache, when the
    trainer loads it; `models/x.safetensors` is a file, not an id). Used first by path_checks, before any folder
    is created, and by check_model_files."""
    path = Path(os.path.expanduser(value))
    if path.exists():
        return None
    if setting != "network.network_weights" and _HUB_ID.fullmatch(value) and path.suffix.lower() not in _MODEL_SUFFIXES:
        return None
    return Msg.of("inputs.missing", setting=Label(setting), path=str(path))


def _check_model_path(setting: str, value: str) -> Msg | None:
    path = Path(os.path.expanduser(value))
    label = Label(setting)
    wanted, wanted_words = _WANTED[setting]
    if path.is_dir() and setting != "network.network_weights":
        return _check_diffusers_folder(setting, path)
    if not path.exists():
        return missing_model_path(setting, value)
    if not path.is_file():
        return Msg.of("inputs.not_a_model", setting=label, path=str(path), detail="not a regular file")
    kind, header = _file_kind(path)
    if kind == "safetensors":
        family = _family_of_header(header)
        if family not in wanted:
            return Msg.of("inputs.wrong_family", setting=label, path=str(path), found=_FAMILY_WORDS.get(family, family), wanted=wanted_words)
        return None
    if kind in ("zip", "pickle"):
        return None  # a torch checkpoint: its keys are checked when the trainer loads it, without running code
    return Msg.of("inputs.not_a_model", setting=label, path=str(path), detail=kind)


def _check_diffusers_folder(setting: str, folder: Path) -> Msg | None:
    label = Label(setting)
    if setting == "model.vae":
        config = folder / "vae" / "config.json" if (folder / "vae" / "config.json").exists() else folder / "config.json"
        return None if config.exists() else Msg.of("inputs.not_diffusers", setting=label, path=str(folder))
    if not ((folder / "model_index.json").exists() or (folder / "unet").is_dir()):
        return Msg.of("inputs.not_diffusers", setting=label, path=str(folder))
    try:
        width = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8")).get("cross_attention_dim")
    except (OSError, ValueError, AttributeError):
        return None  # the loader names a damaged folder
    if width == 1024 and folder_family(folder) is None:  # SD1.5 has 768 (tiny test models less), SDXL 2048, SD2 1024
        return Msg.of("inputs.wrong_width", setting=label, path=str(folder), family="an SD2", width=width)
    return _check_tokenizer(label, folder)


SHIPPED_TOKENS = 49408  # the shipped SD1.5 CLIP tokenizer (loratrainer/assets/sd15/tokenizer), given to folders without one


def _check_tokenizer(label: Label, folder: Path) -> Msg | None:
    """The loader uses the folder's tokenizer files (or the shipped one): each id needs a text-encoder embedding."""
    try:
        embeddings = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))["vocab_size"]
        tokens, where = _tokenizer_size(folder / "tokenizer")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None  # a damaged folder: the loader says what is wrong with it
    if tokens > embeddings:
        return Msg.of("inputs.tokenizer_mismatch", setting=label, tokenizer=where, tokens=tokens, embeddings=embeddings)
    return None


def _tokenizer_size(folder: Path) -> tuple[int, str]:
    """Number of token ids (vocabulary and added tokens) of the tokenizer the loader would use, and where it is."""
    if (folder / "tokenizer.json").is_file():
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        ids = set(data["model"]["vocab"].values()) | {t["id"] for t in data.get("added_tokens", [])}
        return max(ids) + 1, str(folder / "tokenizer.json")
    if (folder / "vocab.json").is_file():
        return max(json.loads((folder / "vocab.json").read_text(encoding="utf-8")).values()) + 1, str(folder / "vocab.json")
    return SHIPPED_TOKENS, "SD1.5"


def _file_kind(path: Path) -> tuple[str, dict]:
    """("safetensors", header) / ("zip", {}) / ("pickle", {}) / (why it is none of them, {})."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) == 8 and head[:2] == b"PK":
                return "zip", {}
            if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
                return "pickle", {}
            if len(head) < 8:
                return "the file is empty or truncated", {}
            (size,) = struct.unpack("<Q", head)
            if size > 100_000_000 or size + 8 > path.stat().st_size:
                return "no safetensors header", {}
            header = json.loads(fh.read(size))
    except OSError as exc:
        return exc.strerror or type(exc).__name__, {}
    except (ValueError, RecursionError):
        return "damaged safetensors header", {}
    if not isinstance(header, dict):
        return "damaged safetensors header", {}
    return "safetensors", header


def _family_of_header(header: dict) -> str:
    from loratrainer.model.families import detect_family

    shapes = {k: _Shape(tuple(v.get("shape", ()))) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    return detect_family(shapes)


# -- the model family ---------------------------------------------------------------------------------------------

FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


def model_family_of(value: str) -> str | None:
    """'sd15' or 'sdxl', read from the model's own weights (a safetensors header: model.families.detect_family) or
    its diffusers config, never from its name; None where that cannot be told without loading it (a hub id, a
    pickle checkpoint) or the model is neither (check_model_files names what it is)."""
    path = Path(os.path.expanduser(value.strip()))
    if not value.strip():
        return None
    if path.is_dir():
        return folder_family(path)
    if path.is_file():
        kind, header = _file_kind(path)
        if kind == "safetensors":
            return {"sd1": "sd15", "sdxl": "sdxl"}.get(_family_of_header(header))
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_family(folder: Path) -> str | None:
    """A diffusers folder's family: SDXL's UNet takes the size conditioning (unet/config.json
    `addition_embed_type: "text_time"`, diffusers' UNet2DConditionModel for SDXL) and its pipeline is
    StableDiffusionXLPipeline with a second text encoder; SD2's 1024-wide cross-attention is neither family."""
    unet = _read_json(folder / "unet" / "config.json")
    index = _read_json(folder / "model_index.json")
    if unet.get("addition_embed_type") == "text_time" or "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index:
        return "sdxl"
    if not unet or unet.get("cross_attention_dim") in (1024, 2048):
        return None
    return "sd15"


def resolve_model_family(config: TrainingConfig) -> tuple[TrainingConfig, Msg | None]:
    """The config with model.model_family set to what the model is (when it can be read), or the one sentence
    that refuses a config whose Model family says another family than the model's own weights."""
    found = model_family_of(config.model.pretrained_model_name_or_path)
    wanted = config.model.model_family
    if found is None:
        return config, None
    if wanted not in ("auto", found):
        return config, Msg.of("inputs.family_mismatch", setting=Label("model.model_family"), wanted=FAMILY_NAMES[wanted],
                              path=config.model.pretrained_model_name_or_path, found=FAMILY_NAMES[found])
    if wanted == found:
        return config, None
    return config.model_copy(update={"model": config.model.model_copy(update={"model_family": found})}), None


# -- leftovers of a killed save ------------------------------------------------------------------------------

_OWN_PARTIAL = re.compile(r"(-\d{6}|-step\d{8}|-interrupted(-\d+)?)?\.safetensors\.[^./]+\.partial")
PARTIAL_GRACE_S = 60  # a .partial written to within this time may belong to a save in progress (another run)


def remove_stale_partials(config: TrainingConfig) -> list[Path]:
    """Remove the hidden `.<output_name>....partial` files a kill during a save left in the output folder (only
    this run's names, and only ones not written to for a minute); returns what was removed."""
    folder = Path(config.folders.output_dir or ".")
    removed: list[Path] = []
    prefix = "." + config.folders.output_name
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".partial")):
            continue
        if not _OWN_PARTIAL.fullmatch(entry.name[len(prefix):]):
            continue  # another output name that merely starts like this one
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > PARTIAL_GRACE_S:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed
