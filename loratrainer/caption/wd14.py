"""WD14-style taggers (SmilingWolf/wd-*): an ONNX model plus selected_tags.csv, run with onnxruntime.

The conventions follow SmilingWolf's reference app (huggingface.co/spaces/SmilingWolf/wd-tagger): the input is
NHWC float32 BGR in 0..255, the image padded to a white square and resized to the model's input size; the
output is one sigmoid probability per row of selected_tags.csv, whose `category` is 9 rating, 0 general,
4 character.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loratrainer.caption import hub
from loratrainer.caption.base import TaggerOptions
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "tagger.not_a_list": "{path} is not a tagger tag list (selected_tags.csv with the columns name and category): {error}",
    "tagger.no_tags": "{path} is not a tagger tag list (selected_tags.csv with the columns name and category): it lists no tags",
    "tagger.missing_files": "tagger folder {folder} lacks {missing} (a WD14 tagger has both)",
    "tagger.both_files": "{first} and {second}",
    "tagger.no_onnxruntime": "the WD14 tagger needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for an NVIDIA GPU)",
    "tagger.unloadable": "cannot load the tagger model {path}: {error}",
    "tagger.tag_count": "{path} lists {tags} tags but the model outputs {outputs}",
    "tagger.no_gpu": "device {device!r}: this onnxruntime cannot use a GPU: pip install onnxruntime-gpu (an NVIDIA GPU is needed), or use cpu",
})

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
# Tags whose underscores are part of the face they draw, so they are kept as they are (reference app).
KAOMOJIS = frozenset(
    "0_0 (o)_(o) +_+ +_- ._. <o>_<o> <|>_<|> =_= >_< 3_3 6_9 >_o @_@ ^_^ o_o u_u x_x |_| ||_||".split()
)


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


def read_tags(path: Path, replace_underscores: bool) -> list[Tag]:
    """selected_tags.csv: columns tag_id, name, category, count; one row per model output, in output order."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        tags = [Tag(_display_name(r["name"], replace_underscores), int(r["category"])) for r in rows]
    except (UnicodeDecodeError, KeyError, TypeError, ValueError, csv.Error) as exc:
        raise UserError(Msg.of("tagger.not_a_list", path=str(path), error=hub.first_line(exc))) from exc
    if not tags:
        raise UserError(Msg.of("tagger.no_tags", path=str(path)))
    return tags


def _display_name(name: str, replace_underscores: bool) -> str:
    return name.replace("_", " ") if replace_underscores and name not in KAOMOJIS else name


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """HWC float32 BGR 0..255, padded to a centred white square and resized to size x size."""
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def select_tags(probs: np.ndarray, tags: list[Tag], options: TaggerOptions) -> list[str]:
    """Tags over their category's threshold, most confident first, undesired ones left out."""
    undesired = {_normal(t) for t in options.undesired_tags}

    def over(category: int, threshold: float) -> list[str]:
        hits = [(p, t.name) for p, t in zip(probs, tags, strict=True) if t.category == category and p >= threshold]
        return [name for _, name in sorted(hits, key=lambda h: -h[0]) if _normal(name) not in undesired]

    general, character = over(GENERAL, options.general_threshold), over(CHARACTER, options.character_threshold)
    chosen = character + general if options.character_first else general + character
    ratings = [(p, t.name) for p, t in zip(probs, tags, strict=True) if t.category == RATING]
    if options.include_rating and ratings:
        chosen.insert(0, max(ratings)[1])
    return chosen


def _normal(tag: str) -> str:
    return tag.strip().replace("_", " ").lower()


def model_files(model: str) -> tuple[Path, Path]:
    """model.onnx and selected_tags.csv from a local folder, or from the hub cache / network for a hub id."""
    folder = hub.local_folder(model)
    if folder is None:
        from huggingface_hub import hf_hub_download

        # Each file from where the hub cache puts it (a snapshot folder per revision), not assumed side by side.
        model_path, tags_path = (
            hub.load(model, lambda repo, name=name, **kw: Path(hf_hub_download(repo, name, **kw)))
            for name in (MODEL_FILE, TAGS_FILE)
        )
        return model_path, tags_path
    files = folder / MODEL_FILE, folder / TAGS_FILE
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(Msg.of("tagger.missing_files", folder=str(folder), missing=Msg.of("tagger.both_files", first=missing[0], second=missing[1]) if len(missing) == 2 else missing[0]))
    return files


class TaggerCaptioner:
    def __init__(self, options: TaggerOptions):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise UserError(Msg.of("tagger.no_onnxruntime")) from exc
        model_path, tags_path = model_files(options.model)
        self.options = options
        self.tags = read_tags(tags_path, options.replace_underscores)
        try:
            self.session = ort.InferenceSession(str(model_path), providers=_providers(ort, options.device))
        except Exception as exc:  # onnxruntime's own types (InvalidProtobuf, Fail, ...): a damaged or foreign file
            raise UserError(Msg.of("tagger.unloadable", path=str(model_path), error=hub.first_line(exc))) from exc
        model_input = self.session.get_inputs()[0]
        batch, height, _, _ = model_input.shape
        # The reference taggers are 448 x 448; a dynamic size (a name, not a number) gets that too.
        self.input_name, self.size = model_input.name, height if isinstance(height, int) and height > 0 else 448
        # Some exported taggers have a fixed batch of 1; those get one image a call.
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else None
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.tags):
            raise UserError(Msg.of("tagger.tag_count", path=str(tags_path), tags=len(self.tags), outputs=n_out))

    def caption(self, images: list[Image.Image]) -> list[str]:
        step = self.max_batch or len(images)
        texts: list[str] = []
        for start in range(0, len(images), step):
            batch = np.stack([to_model_input(im, self.size) for im in images[start : start + step]])
            probs = self.session.run(None, {self.input_name: batch})[0]
            texts += [self.options.tag_separator.join(select_tags(p, self.tags, self.options)) for p in probs]
        return texts


def _providers(ort, device: str | None) -> list:
    """CUDA when there is one (or when asked for, then required), else the CPU; cuda:N picks GPU N."""
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device in (None, ""):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise UserError(Msg.of("hub.bad_device", device=device))
    if not cuda:
        raise UserError(Msg.of("tagger.no_gpu", device=device))
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
