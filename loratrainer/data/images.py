"""The one image loader of the project: files in, upright 8-bit RGB out, or an ImageError naming the file.

The dataset check, the trainer and the captioners all call this module, so an image looks the same to each
of them: EXIF orientation applied, CMYK/palette/16-bit converted, transparency composited onto a chosen
colour (never the hidden RGB behind alpha 0), damaged files refused with a reason.

Sizes for the dataset check come from headers only (`read_image_size`, `probe_image`), so thousands of
images are checked in seconds; `probe_image` adds a cheap end-of-file check that finds truncated files.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define
from PIL import Image

# Kohya's extensions (docs/kohya-compat.md section 1); we match them case-insensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Pillow warns above this many pixels and raises above twice as many; we refuse above it (a 9459 x 9459 image).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ImageError(UserError):
    """An image that cannot be used; str() is '<path>: <reason>'."""

    def __init__(self, path: str | Path, reason: str | Msg):
        super().__init__(reason, path=path)


define({
    "image.empty": "the file is empty (0 bytes): delete it or copy it again",
    # Without Pillow's own words (OSError text): they are English on every page (issue 22), and say no more to a
    # user than "damaged".
    "image.truncated": "the file is truncated or damaged: re-export or delete it",
    "image.missing": "the file does not exist",
    "image.unreadable": "cannot read the file ({detail})",
    "image.too_large": "the image is larger than {max_pixels:,} pixels (a decompression bomb?): refused",
    "image.permission": "permission denied",
    "image.not_image": "not a readable image (unknown format or damaged header)",
    "image.no_pixels": "the image has no pixels (0 width or height)",
})


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image: its upright size and whether it needs a warning."""

    size: tuple[int, int]  # (width, height) after EXIF orientation
    mode: str
    high_bit_depth: bool


def is_image_name(name: str) -> bool:
    """An image by its name. Hidden files (macOS `._a.jpg` resource forks, any `.name`) never are: the one rule
    for training, captioning, the editor and the file browser."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as the image will be trained, i.e. after EXIF rotation, from the header only."""
    return probe_image(path, check_end=False).size


def probe_image(path: str | Path, check_end: bool = True) -> ImageInfo:
    """Read the header (no pixel decoding); with check_end, also find truncated files cheaply.

    A file whose end looks wrong (no JPEG end marker, no PNG IEND chunk, short WebP) is decoded in full to
    decide: some cameras append data after the JPEG end marker and such files are fine.
    """
    path = Path(path)
    size_on_disk = _file_size(path)
    if size_on_disk == 0:
        raise ImageError(path, Msg.of("image.empty"))
    with _open(path) as im:
        orientation = _orientation(im)
        w, h = im.size
        mode, fmt = im.mode, im.format
    if check_end and not _end_looks_complete(path, fmt, size_on_disk):
        load_image(path)  # raises ImageError("truncated ...") when the pixels really are incomplete
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ImageInfo((w, h), mode, mode in _HIGH_BIT_MODES)


def load_image(path: str | Path, background: str | tuple[int, int, int] = "#ffffff") -> Image.Image:
    """The image as upright 8-bit RGB, transparent pixels composited onto `background`."""
    path = Path(path)
    if _file_size(path) == 0:
        raise ImageError(path, Msg.of("image.empty"))
    with _open(path) as im:
        orientation = _orientation(im)  # decided before load, exactly as read_image_size does
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(path, Msg.of("image.truncated")) from None
        rgb = to_rgb(im, background)
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return rgb


def load_alpha(path: str | Path) -> Image.Image:
    """The image's own transparency, upright, as an 8-bit "L" image (255 everywhere when it has none): sd-scripts'
    alpha_mask (library/train_util.py: img[:, :, 3] of the RGBA image, ones without an alpha channel)."""
    path = Path(path)
    with _open(path) as im:
        orientation = _orientation(im)
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError):
            raise ImageError(path, Msg.of("image.truncated")) from None
        has_alpha = "A" in im.getbands() or im.mode.endswith("a") or "transparency" in im.info
        alpha = im.convert("RGBA").getchannel("A") if has_alpha else Image.new("L", im.size, 255)
    if orientation in _TRANSPOSE:
        alpha = alpha.transpose(_TRANSPOSE[orientation])
    return alpha


def to_rgb(im: Image.Image, background: str | tuple[int, int, int] = "#ffffff") -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha (including palette transparency) is composited, never dropped."""
    if im.mode in _HIGH_BIT_MODES:
        im = _to_8bit(im)
    if im.mode == "CMYK":
        return _cmyk_to_rgb(im)
    has_alpha = "A" in im.getbands() or im.mode.endswith("a") or "transparency" in im.info
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, _colour(background) + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16-bit (and 32-bit int / float) pixels to 0..255 instead of clipping (which makes them white)."""
    import numpy as np  # only images that need it pay for the import

    a = np.asarray(im)
    if im.mode == "F":
        a = a * 255.0 if a.size and float(a.max()) <= 1.0 else a
    else:
        a = a.astype(np.float64) / 257.0  # 65535 -> 255, a full 16-bit ramp keeps all 256 levels
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:  # colour-managed when the file says how its inks look; Pillow's formula otherwise
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:  # None only when converting in place (inPlace=True), which we never ask
                return converted
        except Exception:  # a broken profile must not make the image unusable
            pass
    return im.convert("RGB")


def _colour(value: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(value, tuple):
        return value
    h = value.strip().lstrip("#")
    if len(h) != 6:
        raise ValueError(f"background colour {value!r} is not #rrggbb")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise ImageError(path, Msg.of("image.missing")) from None
    except OSError as exc:
        raise ImageError(path, Msg.of("image.unreadable", detail=exc.strerror)) from None


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageError(path, Msg.of("image.too_large", max_pixels=MAX_PIXELS)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, PermissionError):
            raise ImageError(path, Msg.of("image.permission")) from None
        raise ImageError(path, Msg.of("image.not_image")) from None
    if im.size[0] * im.size[1] > MAX_PIXELS:
        im.close()
        raise ImageError(path, Msg.of("image.too_large", max_pixels=MAX_PIXELS))
    if im.size[0] < 1 or im.size[1] < 1:
        im.close()
        raise ImageError(path, Msg.of("image.no_pixels"))
    return im


def _orientation(im: Image.Image) -> int:
    # PNG's getexif() decodes the whole file to look for a late eXIf chunk; the header's is enough here and
    # load_image uses this same function, so the size we report and the image we train always agree.
    try:
        if im.format == "PNG":
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(ORIENTATION_TAG, 1) or 1)
        return int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # a damaged EXIF block means "no rotation", as in every image viewer
        return 1


def _end_looks_complete(path: Path, fmt: str | None, size: int) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 16))
            tail = fh.read()
    except OSError:
        return False
    if fmt == "JPEG":
        return b"\xff\xd9" in tail[-4:]
    if fmt == "PNG":
        return tail.endswith(_PNG_END)
    if fmt == "WEBP":
        with open(path, "rb") as fh:
            head = fh.read(8)
        return int.from_bytes(head[4:8], "little") + 8 <= size
    return False  # other formats (BMP) are small to decode: always decode them
