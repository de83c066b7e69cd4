"""train/device.py: a Mac trains on its GPU (mps) in a precision accelerate accepts there; a machine without a GPU
on the CPU; the note says what changed as a coded message (run/notes.py), which the page says in its language."""

from __future__ import annotations

import re

import pytest

from loratrainer.train.device import Support, choose, probe

MAC_NEW = Support(cuda=False, mps=True, mps_fp16=True, mps_bf16=True)  # torch >= 2.5 on macOS 14
MAC_OLD = Support(cuda=False, mps=True, mps_fp16=False, mps_bf16=False)  # older torch on macOS 13


@pytest.mark.parametrize("precision", ["no", "fp16", "bf16"])
def test_a_cuda_gpu_keeps_the_configured_precision(precision):
    assert choose(precision, Support(cuda=True)) == choose(precision, Support(cuda=True, mps=True))
    assert choose(precision, Support(cuda=True)).kind == "cuda" and choose(precision, Support(cuda=True)).precision == precision


@pytest.mark.parametrize("precision", ["no", "fp16", "bf16"])
def test_a_mac_with_a_new_torch_trains_on_mps_in_the_configured_precision(precision):
    device = choose(precision, MAC_NEW)
    assert (device.kind, device.precision, device.note) == ("mps", precision, None)


@pytest.mark.parametrize("precision, words", [("fp16", "PyTorch 2.5"), ("bf16", "macOS 14")])
def test_a_mac_that_cannot_keeps_mps_in_fp32_and_says_why(precision, words):
    device = choose(precision, MAC_OLD)
    assert device.kind == "mps" and device.precision == "no"
    english = str(device.note)
    assert words in english and "Apple GPU (mps)" in english and device.note.code.startswith("train.precision_off_mps")
    assert device.note.params["precision"] == precision


def test_no_gpu_trains_on_the_cpu_and_fp16_turns_off():
    cpu = Support(cuda=False)
    assert choose("no", cpu) == choose("no", cpu) and choose("no", cpu).kind == "cpu" and choose("no", cpu).note is None
    assert choose("bf16", cpu).precision == "bf16"  # bf16 autocast works on the CPU (accelerate: native on cpu)
    fp16 = choose("fp16", cpu)
    assert (fp16.kind, fp16.precision) == ("cpu", "no") and fp16.note.code == "train.precision_off_cpu" and "CPU" in str(fp16.note)


def test_this_machine_is_probed_without_error():
    import torch

    found = probe()
    assert found.cuda == torch.cuda.is_available()
    if not found.mps:
        assert not (found.mps_fp16 or found.mps_bf16)
    assert re.match(r"^(cuda|mps|cpu)$", choose("fp16", found).kind)
