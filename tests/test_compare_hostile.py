"""`loratrainer compare` on bad numbers and special files (docs/reliability.md "LoRA tools and compare"): each is
one sentence before anything loads (a 100000-pixel side asked for 40 GB; NaN weights were rendered; a header that
is not an object was "cannot write OUT.png"; /dev/zero "does not exist"; a FIFO hung)."""

from __future__ import annotations

import os

import pytest
from safetensors.torch import save_file
import torch

from loratrainer.cli import main
from tests.hang_guard import deadline


@pytest.fixture()
def lora(tmp_path):
    path = tmp_path / "l.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4)}, str(path))
    return path


def error_of(capsys, argv):
    with deadline(60):  # a FIFO must not hang the test run
        code = main(["compare", *argv, "--model", "some/model", "--prompt", "a cat"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("extra, says", [
    (["--width", "100000"], "--width must be a multiple of 8 from 8 to 8192 pixels, as a sample image's size (got 100000)."),
    (["--height", "8200"], "--height must be a multiple of 8 from 8 to 8192 pixels"),
    (["--height", "0"], "--height must be a multiple of 8 from 8 to 8192 pixels"),
    (["--steps", "100000"], "--steps must be from 1 to 1000, as a sample image's steps (got 100000)."),
    (["--weights", "0,nan"], "--weights: nan is not a finite number"),
    (["--weights", "inf"], "--weights: inf is not a finite number"),
    (["--cfg", "nan"], "--cfg must be a finite number of 0 or more, such as 7 (got nan)."),
    (["--cfg=-inf"], "--cfg must be a finite number of 0 or more"),
])
def test_numbers_are_bounded_as_a_sample_images(lora, tmp_path, capsys, extra, says):
    line = error_of(capsys, [str(lora), *extra, "-o", str(tmp_path / "g.png")])
    assert line.startswith("error: " + says), line
    assert not (tmp_path / "g.png").exists()


def test_special_and_damaged_files_are_named_as_what_they_are(tmp_path, capsys):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    listed = tmp_path / "list.safetensors"
    listed.write_bytes((7).to_bytes(8, "little") + b"[1,2,3]")
    out = str(tmp_path / "g.png")
    assert error_of(capsys, [str(fifo), "-o", out]) == f"error: {fifo} is not a regular file (a pipe, a device or a socket); give a LoRA .safetensors file."
    assert error_of(capsys, [str(zero), "-o", out]) == f"error: {zero} is not a regular file (a pipe, a device or a socket); give a LoRA .safetensors file."
    assert error_of(capsys, [str(listed), "-o", out]) == f"error: {listed} cannot be read as a LoRA file (its header is not a JSON object)."
    assert error_of(capsys, [str(tmp_path / "none.safetensors"), "-o", out]) == f"error: {tmp_path / 'none.safetensors'} does not exist."


def test_results_metadata_reader_survives_a_list_header_a_fifo_and_dev_zero(tmp_path):
    """The Results tab reads a clicked file's metadata: a JSON-list header gave an AttributeError, a FIFO hung
    the page's handler (for every user of the page)."""
    from loratrainer.gui.tab_results import read_metadata

    listed = tmp_path / "list.safetensors"
    listed.write_bytes((7).to_bytes(8, "little") + b"[1,2,3]")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(1)}, str(good), metadata={"ss_network_dim": "4"})
    with deadline(30):
        assert read_metadata(listed) == {} and read_metadata(fifo) == {} and read_metadata("/dev/zero") == {}
    assert read_metadata(good) == {"ss_network_dim": "4"}
