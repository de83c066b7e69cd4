"""The LoRA tools on a hostile or unlucky day (docs/reliability.md "LoRA tools and compare"): non-finite inputs,
an alpha stored as a vector, a rank-0 module, an absurd rank, a FIFO or /dev/zero as the LoRA, a damaged header,
a dangling link as the output, and the mode of merge-into's folder. Each is one sentence and no file written."""

from __future__ import annotations

import os
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loratrainer.cli import main
from loratrainer.tools.inspection import inspect_lora
from loratrainer.tools.merge import merge_loras
from tests.hang_guard import deadline
from tests.test_lora_tools import make_lora, modules_of, read
from tests.tiny_sd import save_tiny_single_file, tiny_config_dir


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    good = make_lora(d / "good.safetensors", 1, dim=4, alpha=2)
    state, meta = read(good)
    name = sorted(modules_of(state))[0]
    broken = {}
    for kind, change in {
        "nan": lambda s: s[name + ".lora_up.weight"].view(-1).__setitem__(0, float("nan")),
        "inf_alpha": lambda s: s.__setitem__(name + ".alpha", torch.tensor(float("inf"))),
        "vector_alpha": lambda s: s.__setitem__(name + ".alpha", torch.tensor([2.0, 2.0, 2.0, 2.0])),
        "rank0": lambda s: (s.__setitem__(name + ".lora_down.weight", torch.zeros(0, s[name + ".lora_down.weight"].shape[1])),
                            s.__setitem__(name + ".lora_up.weight", torch.zeros(s[name + ".lora_up.weight"].shape[0], 0))),
    }.items():
        s = {k: v.clone() for k, v in state.items()}
        change(s)
        broken[kind] = d / f"{kind}.safetensors"
        save_file(s, str(broken[kind]), metadata=meta)
    model = save_tiny_single_file(d / "tiny.safetensors")
    return {"good": good, "module": name, "model": model, "config": tiny_config_dir(d / "config"), **broken}


def cli_error(capsys, argv):
    with deadline(60):
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _tool_argvs(lora, m, tmp_path):
    out = tmp_path / "out.safetensors"
    return {
        "merge": ["lora", "merge", str(lora), "-o", str(out)],
        "merge --rank": ["lora", "merge", str(lora), "--rank", "2", "-o", str(out)],
        "resize": ["lora", "resize", str(lora), "--rank", "2", "-o", str(out)],
        "merge-into": ["lora", "merge-into", str(m["model"]), str(lora), "-o", str(out), "--model-config", str(m["config"])],
        "merge-into --diffusers": ["lora", "merge-into", str(m["model"]), str(lora), "--diffusers", str(tmp_path / "dir"),
                                   "--model-config", str(m["config"])],
    }


@pytest.mark.parametrize("kind, says", [("nan", "holds NaN or infinite values"), ("inf_alpha", "holds NaN or infinite values"),
                                        ("vector_alpha", "instead of one number"), ("rank0", "has rank 0")])
def test_every_tool_refuses_a_damaged_lora_in_one_sentence_and_writes_nothing(material, kind, says, tmp_path, capsys):
    """merge-into baked NaN into the model without a word, resize died in LinAlgError, a vector alpha gave a
    ValueError and a rank-0 module a ZeroDivisionError."""
    for tool, argv in _tool_argvs(material[kind], material, tmp_path).items():
        line = cli_error(capsys, argv)
        assert says in line and material["module"] in line, (tool, line)
        assert list(tmp_path.iterdir()) == [], tool


def test_inspect_names_a_vector_alpha_and_a_rank_0_module(material):
    assert [p.code for p in inspect_lora(material["vector_alpha"]).problems if p.code != "unknown_modules"] == ["bad_alpha"]
    assert [p.code for p in inspect_lora(material["rank0"]).problems if p.code != "unknown_modules"] == ["empty_module"]
    assert [p.code for p in inspect_lora(material["nan"]).problems] == ["non_finite"]


def test_a_model_with_nan_is_refused_by_merge_into_and_extract(material, tmp_path, capsys):
    state, meta = read(material["model"])
    key = next(k for k in state if k.startswith("model.diffusion_model.") and k.endswith("attn1.to_q.weight"))
    state[key].view(-1)[3] = float("inf")
    bad = tmp_path / "bad-model.safetensors"
    save_file(state, str(bad))
    said = f"error: The model {bad} holds NaN or infinite values in {key}; nothing was written."
    for out in (["-o", str(tmp_path / "o.safetensors")], ["--diffusers", str(tmp_path / "dir")]):
        line = cli_error(capsys, ["lora", "merge-into", str(bad), str(material["good"]), *out, "--model-config", str(material["config"])])
        assert line == said, out
    line = cli_error(capsys, ["lora", "extract", str(material["model"]), str(bad), "--rank", "2", "-o",
                              str(tmp_path / "x.safetensors"), "--model-config", str(material["config"])])
    assert line == said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-model.safetensors"]


def test_merge_rank_is_bounded_by_the_weights(material, tmp_path):
    """`--rank 100000000` padded every module with zeros up to that rank (51 GB for an SD1.5 LoRA); it is bounded
    by the weight's own size, as sd-scripts' svd_merge_lora.py does (min(rank, in_dim, out_dim))."""
    out = tmp_path / "big.safetensors"
    merge_loras([(material["good"], 1.0)], out, rank=100_000_000, precision="float")
    state, _ = read(out)
    for n in modules_of(state):
        down, up = state[n + ".lora_down.weight"], state[n + ".lora_up.weight"]
        assert down.shape[0] <= min(up.shape[0], down.shape[1]), n


_CALLS = """
import contextlib, io, json, sys
from loratrainer.cli import main
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    print(json.dumps([code, err.getvalue()]), flush=True)
"""


def test_the_tools_open_only_regular_files(tmp_path):
    """A FIFO hung inspect and ignored SIGTERM (safetensors' open retries on EINTR, so the calls run in a
    subprocess with a timeout), /dev/zero grew to 10 GB in 8 seconds: each is refused at once in one sentence."""
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    link = tmp_path / "z.safetensors"
    link.symlink_to("/dev/zero")
    specials = [fifo, Path("/dev/zero"), link]
    argvs = [argv for path in specials for argv in (["lora", "inspect", str(path)],
                                                     ["lora", "merge", str(path), "-o", str(tmp_path / "o.safetensors")])]
    proc = subprocess.run([sys.executable, "-c", _CALLS, json.dumps(argvs)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent, env={**os.environ})
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(argvs), proc.stderr[-2000:]
    for argv, (code, err) in zip(argvs, results):
        path = argv[2]
        assert code == 2 and "Traceback" not in err, (argv, err)
        assert err.strip() == (f"error: {path} is not a regular file (a pipe, a device or a socket); "
                               "choose the LoRA .safetensors file itself."), (argv, err)


@pytest.mark.parametrize("header, says", [(b"[1, 2, 3]", "not a JSON object"), (b"{}", "does not fit a file"),
                                          (b"x" * 64, "not valid JSON")])
def test_a_damaged_header_is_one_sentence(header, says, tmp_path, capsys):
    path = tmp_path / "h.safetensors"
    length = len(header) if says != "does not fit a file" else 10**12
    path.write_bytes(length.to_bytes(8, "little") + header)
    line = cli_error(capsys, ["lora", "inspect", str(path)])
    assert line.startswith(f"error: The LoRA file {path} cannot be read (") and says in line


def test_an_output_that_is_a_dangling_link_exists(material, tmp_path, capsys):
    """It passed the check (Path.exists follows the link) and was then called "appeared while writing"."""
    out = tmp_path / "out.safetensors"
    out.symlink_to(tmp_path / "nowhere")
    line = cli_error(capsys, ["lora", "merge", str(material["good"]), "-o", str(out)])
    assert line == f"error: {out} exists; not overwriting it. Choose another output name."
    assert os.path.islink(out) and not (tmp_path / "nowhere").exists()


def test_merge_into_folder_follows_the_umask(material, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["lora", "merge-into", str(material["model"]), str(material["good"]), "--diffusers",
                     str(tmp_path / "model"), "--model-config", str(material["config"])]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "model" / "unet").stat().st_mode) == 0o755


def test_a_merge_of_modules_with_differing_ranks_says_dynamic(material, tmp_path):
    """merge_lora.py writes "Dynamic" when the modules' ranks differ (LoCon's convolutions included)."""
    a = make_lora(tmp_path / "a.safetensors", 3, dim=4, alpha=4, conv_dim=2, conv_alpha=2)
    merge_loras([(a, 1.0), (material["good"], 0.5)], tmp_path / "m.safetensors")
    _, meta = read(tmp_path / "m.safetensors")
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"
