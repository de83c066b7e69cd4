"""Our LoRA tools against sd-scripts' own, number by number, on one small LoRA over the tiny model's modules
(a Linear, a 1x1 convolution, a 3x3 convolution, a text encoder Linear). sd-scripts' outputs were written by its
networks/resize_lora.py, svd_merge_lora.py and merge_lora.py at the commit in
tests/fixtures/sd_scripts_tools/sd_scripts_commit.txt, on the CPU in float32, from a venv of its own
(tests/fixtures/sd_scripts_tools/record.py says how)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loratrainer.tools.extract import extract_lora
from loratrainer.tools.resize import resize_lora
from tests.test_lora_tools import delta, modules_of, read
from tests.tiny_sd import build_tiny_components, save_tiny_diffusers

FIXTURES = Path(__file__).parent / "fixtures" / "sd_scripts_tools"
INPUT = FIXTURES / "input.safetensors"
PROJ_IN = "lora_unet_up_blocks_1_attentions_0_proj_in"  # a 1x1 convolution


def _rank(state, name):
    return state[name + ".lora_down.weight"].shape[0]


def test_the_input_has_a_1x1_convolution_a_3x3_one_and_linears():
    state, _ = read(INPUT)
    kernels = sorted(tuple(state[n + ".lora_down.weight"].shape[2:]) for n in modules_of(state))
    assert kernels == [(), (), (1, 1), (3, 3)]


@pytest.mark.parametrize("fixture, kwargs", [
    ("resize-r3-c2.safetensors", dict(rank=3, conv_rank=2)),
    ("resize-sv_fro-0.9.safetensors", dict(rank=6, dynamic="sv_fro", param=0.9)),
])
def test_resize_gives_sd_scripts_ranks_deltas_and_alpha_text(fixture, kwargs, tmp_path):
    """--conv-rank reaches every convolution, the 1x1 proj_in included, as resize_lora.py's code does (its help
    says 3x3); the deltas agree to float32 rounding; alpha is written as sd-scripts writes it ("1.5", "2.0")."""
    theirs, their_meta = read(FIXTURES / fixture)
    resize_lora(INPUT, tmp_path / "ours.safetensors", precision="float", **kwargs)
    ours, our_meta = read(tmp_path / "ours.safetensors")
    assert modules_of(ours) == modules_of(theirs)
    for n in modules_of(theirs):
        assert _rank(ours, n) == _rank(theirs, n), n
        assert float(ours[n + ".alpha"]) == pytest.approx(float(theirs[n + ".alpha"]), rel=1e-6), n
        d_ours, d_theirs = delta(ours, n), delta(theirs, n)
        assert float((d_ours - d_theirs).abs().max()) <= 1e-5 * float(d_theirs.abs().max()), n
    if "conv_rank" in kwargs:
        assert _rank(ours, PROJ_IN) == 2  # the 1x1 convolution takes the conv rank
        # written as Python writes a float, as sd-scripts does; sd-scripts' value is the last module's alpha (here a
        # convolution's "1.0"), ours the Linear modules' alpha, which is what ss_network_alpha means
        assert our_meta["ss_network_alpha"] == "1.5" and their_meta["ss_network_alpha"] == "1.0"
        assert json.loads(our_meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
    else:
        assert our_meta["ss_network_dim"] == their_meta["ss_network_dim"] == "Dynamic"


def _tuned_by(lora: Path, folder: Path) -> Path:
    """The tiny model with the LoRA's delta added (as sd-scripts adds it: up @ down * alpha / rank)."""
    from loratrainer.model.lora import kohya_name

    parts = build_tiny_components(0)
    state, _ = read(lora)
    with torch.no_grad():
        for part in ("unet", "text_encoder"):
            model = getattr(parts, part)
            for path, module in model.named_modules():
                name = kohya_name(part, path if part == "unet" else "text_model." + path.removeprefix("text_model."))
                if name in modules_of(state):
                    module.weight += delta(state, name).reshape(module.weight.shape).float()
    parts.pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def test_extract_clamp_quantile_is_kohyas_clamp(tmp_path):
    """--clamp-quantile 0.99: U times the singular values first, one quantile over both factors together
    (extract_lora_from_models.py; svd_merge_lora.py clamps with the same lines at its CLAMP_QUANTILE 0.99).
    The same difference reduced by both agrees to 1e-4; without the clamp ours is the plain SVD, farther away."""
    base = save_tiny_diffusers(tmp_path / "base")
    tuned = _tuned_by(INPUT, tmp_path / "tuned")
    theirs, _ = read(FIXTURES / "svd-merge-r3.safetensors")
    extract_lora(base, tuned, tmp_path / "ours.safetensors", rank=3, conv_rank=3, min_diff=1e-5, clamp_quantile=0.99)
    extract_lora(base, tuned, tmp_path / "plain.safetensors", rank=3, conv_rank=3, min_diff=1e-5)
    ours, _ = read(tmp_path / "ours.safetensors")
    plain, _ = read(tmp_path / "plain.safetensors")
    assert modules_of(theirs) <= modules_of(ours)
    clamped_somewhere = False
    for n in modules_of(theirs):
        d_theirs = delta(theirs, n)
        scale = float(d_theirs.abs().max())
        assert float((delta(ours, n) - d_theirs).abs().max()) <= 1e-4 * scale, n
        clamped_somewhere |= float((delta(plain, n) - d_theirs).abs().max()) > 1e-3 * scale
    assert clamped_somewhere  # the comparison can tell the clamp from no clamp


def test_concat_is_not_our_exact_merge():
    """docs/lora-tools.md: sd-scripts' merge_lora.py --concat multiplies both factors by the ratio (the delta by
    its square) and keeps the first file's alpha over the summed rank; ours is the exact weighted sum."""
    src, _ = read(INPUT)
    concat, _ = read(FIXTURES / "concat-0.5.safetensors")
    for n in modules_of(src):
        rank = _rank(src, n)
        assert _rank(concat, n) == 2 * rank and float(concat[n + ".alpha"]) == float(src[n + ".alpha"])
        # two copies at 0.5: sum of 0.5^2 * up @ down, at alpha / (2 * rank)
        expected = delta(src, n) * (2 * 0.25) * rank / (2 * rank)
        assert torch.allclose(delta(concat, n), expected, rtol=1e-5, atol=1e-7), n
