"""A labelled image grid as one PNG: column labels on top, row labels on the left, cells scaled to one size.

Pillow only. Labels use a system font that also covers Korean where one is installed (Noto CJK), else Pillow's
built-in font."""

from __future__ import annotations

import textwrap
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "C:/Windows/Fonts/malgun.ttf",
    "/System/Library/Fonts/AppleSDGothicNeo.ttc",
)
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MISSING = (225, 225, 225)


@lru_cache(maxsize=8)
def font(size: int):
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            try:
                return ImageFont.truetype(candidate, size)
            except OSError:
                continue
    return ImageFont.load_default(size=size)


def labelled_grid(cells: list[list[Image.Image | None]], row_labels: list[str], col_labels: list[str], *, title: str = "",
                  cell_size: tuple[int, int] | None = None, label_width: int | None = None) -> tuple[Image.Image, list[list[list[int]]]]:
    """`cells[row][col]` (None = no image: a grey cell) under `col_labels`, beside `row_labels`; and each cell's
    [x, y, width, height] in the image (the JSON sidecars record them, so a cell can be cut out again)."""
    present = [c for row in cells for c in row if c is not None]
    if cell_size is None:
        cell_size = (max((c.width for c in present), default=64), max((c.height for c in present), default=64))
    cw, ch = cell_size
    size = max(12, min(20, cw // 10))
    f = font(size)
    line = size + 6
    label_width = label_width or max(120, min(260, cw))
    chars = max(8, int(label_width / (size * 0.55)))
    rows = [textwrap.wrap(text, chars)[:max(1, ch // line)] or [""] for text in row_labels]
    cols = [textwrap.wrap(text, max(6, int(cw / (size * 0.55))))[:3] or [""] for text in col_labels]
    head = line * max((len(c) for c in cols), default=1) + 8
    title_lines = textwrap.wrap(title, max(20, int((label_width + cw * len(col_labels)) / (size * 0.55))))[:3] if title else []
    top = line * len(title_lines) + (6 if title_lines else 0)
    pad = 4
    width = label_width + len(col_labels) * (cw + pad) + pad
    height = top + head + len(row_labels) * (ch + pad) + pad
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    boxes: list[list[list[int]]] = []
    for i, text in enumerate(title_lines):
        draw.text((pad, pad + i * line), text, fill=INK, font=f)
    for j, lines in enumerate(cols):
        x = label_width + pad + j * (cw + pad)
        for k, text in enumerate(lines):
            draw.text((x + 2, top + 2 + k * line), text, fill=INK, font=f)
    for i, lines in enumerate(rows):
        y = top + head + i * (ch + pad)
        boxes.append([])
        for k, text in enumerate(lines):
            draw.text((pad, y + 2 + k * line), text, fill=INK, font=f)
        for j in range(len(col_labels)):
            x = label_width + pad + j * (cw + pad)
            boxes[i].append([x, y, cw, ch])
            cell = cells[i][j] if j < len(cells[i]) else None
            if cell is None:
                draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=MISSING)
                continue
            if cell.size != (cw, ch):
                cell = cell.resize((cw, ch), Image.Resampling.LANCZOS)
            image.paste(cell.convert("RGB"), (x, y))
    return image, boxes

