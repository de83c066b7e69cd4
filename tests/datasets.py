"""Generators of test datasets: images of given sizes and modes, captions, concept folders.

Everything here writes small real files into a folder the caller owns (usually pytest's tmp_path), so any
test can build the exact dataset it needs in milliseconds. Colours are chosen so that a test can check
what the loader produced (e.g. the hidden red behind transparent pixels must never show).

    root = make_dataset(tmp_path / "image", {"10_dog": [(64, 48), (48, 64)], "1_cat": 3})
    make_caption(root / "10_dog" / "img_000.png", "a dog")
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
from PIL import Image

Size = tuple[int, int]
# A concept's images: a count (default size), or a list of sizes.
ImageSpec = Union[int, Sequence[Size]]

RED = (255, 0, 0)
GREEN = (0, 160, 0)
ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
JUNK_NAMES = ("._a.jpg", ".DS_Store", "Thumbs.db", "notes.pdf", "x.jpg~")


def make_image(path: str | Path, size: Size = (64, 64), color: tuple[int, int, int] = GREEN, mode: str = "RGB") -> Path:
    """A solid-colour image; the format follows the extension (.png, .jpg, .jpeg, .webp, .bmp, any case)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower())
    img.save(path, format=fmt) if fmt else img.save(path)
    return path


def make_caption(
    image_path: str | Path,
    text: str,
    extension: str = ".txt",
    *,
    bom: bool = False,
    newline: str = "\n",
) -> Path:
    """Write `<stem><extension>` next to the image; `bom` and `newline` produce the encodings users have."""
    image_path = Path(image_path)
    path = image_path.with_name(image_path.stem + extension)
    data = text.replace("\n", newline).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def make_concept(
    parent: str | Path,
    folder_name: str,
    images: ImageSpec = 2,
    *,
    ext: str = ".png",
    captions: bool | str = True,
    caption_extension: str = ".txt",
    prefix: str = "img",
) -> Path:
    """A concept folder `parent/folder_name` with images `img_000.png`, ... and (optionally) captions.

    captions=True writes "caption for img_000"; a string writes that text for every image; False writes none.
    """
    folder = Path(parent) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(64, 64)] * images if isinstance(images, int) else list(images)
    for i, size in enumerate(sizes):
        img = make_image(folder / f"{prefix}_{i:03d}{ext}", size)
        if captions:
            text = captions if isinstance(captions, str) else f"caption for {img.stem}"
            make_caption(img, text, caption_extension)
    return folder


def make_dataset(root: str | Path, concepts: Mapping[str, ImageSpec], **kwargs) -> Path:
    """A train_data_dir (or reg_data_dir) holding one concept folder per entry: {"10_dog": 3, "2_cat": [(64, 48)]}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, images in concepts.items():
        make_concept(root, name, images, **kwargs)
    return root


def make_junk(folder: str | Path, names: Iterable[str] = JUNK_NAMES) -> list[Path]:
    """Files that must be ignored: AppleDouble, .DS_Store, Thumbs.db, a PDF, an editor backup."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        p = folder / name
        p.write_bytes(b"\x00\x05\x16\x07 junk")
        out.append(p)
    return out


# -- awkward images --------------------------------------------------------------------------------------------


def make_zero_byte(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_truncated_jpeg(path: str | Path, size: Size = (64, 64)) -> Path:
    """A JPEG cut in half: its header (and size) reads fine, its pixels do not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise, "RGB").save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_cmyk_jpeg(path: str | Path, size: Size = (32, 32), rgb: tuple[int, int, int] = RED) -> Path:
    """A CMYK JPEG of one colour (pure red = C0 M255 Y255 K0 when converted by Pillow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).convert("CMYK").save(path, "JPEG", quality=100)
    return path


def make_palette_png_transparent(path: str | Path, size: Size = (32, 32)) -> Path:
    """A palette PNG: left half transparent (palette entry red, hidden), right half opaque blue."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("P", size, 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    img.paste(1, (size[0] // 2, 0, size[0], size[1]))
    img.save(path, transparency=0)
    return path


def make_rgba_transparent_red(path: str | Path, size: Size = (32, 32)) -> Path:
    """An RGBA PNG whose background is red with alpha 0 and whose centre is opaque green."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", size, (255, 0, 0, 0))
    w, h = size
    img.paste((0, 160, 0, 255), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    img.save(path)
    return path


def make_16bit_ramp(path: str | Path, width: int = 256, height: int = 4) -> Path:
    """A 16-bit greyscale PNG (mode I;16): a ramp over the full 0..65535 range, so 8-bit output has 256 levels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    Image.fromarray(np.tile(row, (height, 1))).save(path)
    return path


def make_exif_rotated_jpeg(path: str | Path, stored: Size = (60, 40), orientation: int = 6) -> Path:
    """A JPEG stored `stored` (w, h) with an EXIF orientation tag; orientation 6 displays it as (h, w).

    The stored top-left quarter is red, the rest green: after rotating upright (orientation 6 = turn 90°
    clockwise) the red corner is at the top right.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", stored, GREEN)
    img.paste(RED, (0, 0, stored[0] // 2, stored[1] // 2))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    img.save(path, "JPEG", quality=100, exif=exif.tobytes())
    return path


def make_bomb_png(path: str | Path, size: Size = (30000, 30000)) -> Path:
    """A PNG whose header claims `size` (900 Mpx by default) but that holds no pixel data: a decompression bomb."""
    import struct
    import zlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", size[0], size[1], 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path
