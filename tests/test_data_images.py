"""The shared image loader (docs/reliability.md rows 1, 3-7): every awkward file becomes correct RGB or a named error."""

from __future__ import annotations

import pytest
from PIL import Image

from loratrainer.data.images import ImageError, load_image, probe_image, read_image_size
from loratrainer.errors import UserError
from tests import datasets as ds


def _close(a, b, tol=12):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_zero_byte_file_is_named_error(tmp_path):
    path = ds.make_zero_byte(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="0 bytes") as err:
        load_image(path)
    assert isinstance(err.value, UserError) and str(path) in str(err.value)
    with pytest.raises(ImageError, match="0 bytes"):
        probe_image(path)


def test_truncated_jpeg_found_by_probe_and_loader(tmp_path):
    path = ds.make_truncated_jpeg(tmp_path / "cut.jpg")
    assert read_image_size(path) == (64, 64)  # the header alone is fine...
    with pytest.raises(ImageError, match="truncated"):
        probe_image(path)  # ...the end-of-file check notices
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


def test_jpeg_with_data_after_end_marker_is_fine(tmp_path):
    # Motion photos append a video after the JPEG end marker; they must not be called truncated.
    path = ds.make_image(tmp_path / "motion.jpg", (32, 32))
    path.write_bytes(path.read_bytes() + b"ftypmp42" + b"\x00" * 100)
    assert probe_image(path).size == (32, 32)
    assert load_image(path).size == (32, 32)


def test_cmyk_jpeg_gives_rgb_red(tmp_path):
    img = load_image(ds.make_cmyk_jpeg(tmp_path / "cmyk.jpg"))
    assert img.mode == "RGB"
    assert _close(img.getpixel((16, 16)), (255, 0, 0), tol=20)


def test_palette_png_with_transparency_composited(tmp_path):
    img = load_image(ds.make_palette_png_transparent(tmp_path / "p.png"))
    assert img.mode == "RGB"
    assert img.getpixel((2, 16)) == (255, 255, 255)  # transparent: white, never the palette's red
    assert img.getpixel((30, 16)) == (0, 0, 255)


def test_rgba_transparent_red_becomes_white_or_chosen_colour(tmp_path):
    path = ds.make_rgba_transparent_red(tmp_path / "rgba.png")
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(path).getpixel((16, 16)) == (0, 160, 0)
    assert load_image(path, background="#000000").getpixel((0, 0)) == (0, 0, 0)
    assert load_image(path, background="#808080").getpixel((1, 1)) == (128, 128, 128)


def test_16_bit_ramp_keeps_256_levels(tmp_path):
    path = ds.make_16bit_ramp(tmp_path / "deep.png")
    info = probe_image(path)
    assert info.high_bit_depth
    img = load_image(path)
    values = [img.getpixel((x, 0))[0] for x in range(256)]
    assert len(set(values)) == 256 and values[0] == 0 and values[-1] == 255


def test_exif_orientation_6_is_upright(tmp_path):
    path = ds.make_exif_rotated_jpeg(tmp_path / "phone.jpg", stored=(60, 40), orientation=6)
    assert read_image_size(path) == (40, 60)
    img = load_image(path)
    assert img.size == (40, 60)
    # Orientation 6 = rotate 90° clockwise: the stored top-left red corner ends at the top right.
    assert _close(img.getpixel((35, 5)), (255, 0, 0), tol=40)
    assert _close(img.getpixel((5, 5)), (0, 160, 0), tol=40)


@pytest.mark.parametrize("size", [(10000, 10000), (30000, 30000)])  # above Pillow's warning, above its error limit
def test_decompression_bomb_refused_without_decoding(tmp_path, size):
    path = ds.make_bomb_png(tmp_path / "bomb.png", size)
    with pytest.raises(ImageError, match="decompression bomb"):
        probe_image(path)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)


def test_non_image_with_image_extension_is_named(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image") as err:
        load_image(path)
    assert "fake.png" in str(err.value)


@pytest.mark.parametrize("mode", ["L", "LA", "1", "RGB", "RGBA"])
def test_every_common_mode_gives_rgb(tmp_path, mode):
    path = ds.make_image(tmp_path / f"m_{mode}.png", (8, 8), mode=mode)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (8, 8)
    assert isinstance(img, Image.Image)
