"""`lora inspect` on Kohya, diffusers/peft and LyCORIS files, and the problems it must flag; the CLI group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loratrainer.cli import main
from loratrainer.config import TrainingConfig, with_values
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.lora import inject_lora
from loratrainer.model.saving import save_diffusers_lora
from loratrainer.tools.inspection import inspect_lora
from tests.test_lora_tools import make_lora, modules_of, read
from tests.tiny_sd import build_tiny_components, save_tiny_single_file, tiny_config_dir


@pytest.fixture(scope="module")
def kohya_and_diffusers(tmp_path_factory):
    """The same trained adapters saved in Kohya's format and in diffusers' (peft keys + adapter metadata)."""
    d = tmp_path_factory.mktemp("formats")
    config = with_values(TrainingConfig(), {"network_dim": 4, "network_alpha": 2})
    handle = inject_lora(build_tiny_components(), config.network, train_unet=True, train_text_encoder=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in handle.unet_parameters() + handle.text_encoder_parameters():
            p.normal_(std=0.2)
    kohya = d / "k.safetensors"
    save_file(lora_state_dict(handle, torch.float16), str(kohya), metadata={
        "ss_base_model_version": "sd_v1", "ss_network_dim": "4", "modelspec.title": "cat",
        "ss_tag_frequency": json.dumps({"10_cat": {"cat": 4, "sitting": 2}, "5_dog": {"dog": 3, "sitting": 1}})})
    folder = save_diffusers_lora(d / "diffusers", handle)
    return kohya, folder / "pytorch_lora_weights.safetensors"


def test_kohya_file_report(kohya_and_diffusers):
    kohya, _ = kohya_and_diffusers
    r = inspect_lora(kohya)
    assert (r.format, r.family) == ("kohya", "sd1")
    state, _ = read(kohya)
    n_unet = len({m for m in modules_of(state) if m.startswith("lora_unet_")})
    assert r.modules == {"unet": n_unet, "text_encoder": len(modules_of(state)) - n_unet}
    j = r.to_json()
    assert (j["rank"], j["alpha"]) == (4, 2.0) and j["dtypes"] == {"F16": len(state)}
    assert j["size_bytes"] == kohya.stat().st_size and j["metadata"]["modelspec.title"] == "cat"
    assert j["tags"]["distinct"] == 3 and j["tags"]["top"][:2] == [["cat", 4], ["sitting", 3]]
    assert r.problems == [] and "problems:  none found" in r.format_text()


def test_diffusers_peft_file_reads_as_the_same_modules(kohya_and_diffusers):
    kohya, diffusers_file = kohya_and_diffusers
    a, b = inspect_lora(kohya), inspect_lora(diffusers_file)
    assert b.format == "diffusers-peft" and b.problems == []
    assert b.ranks == a.ranks and b.alphas == a.alphas  # alphas from diffusers' lora_adapter_metadata
    assert b.modules == a.modules


def test_old_diffusers_keys_and_a_folder_are_read(kohya_and_diffusers, tmp_path):
    _, diffusers_file = kohya_and_diffusers
    state, _ = read(diffusers_file)
    old = {k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): v for k, v in state.items()}
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / "pytorch_lora_weights.safetensors"))
    r = inspect_lora(tmp_path / "old")  # a diffusers LoRA folder
    assert r.format == "diffusers-peft" and r.problems == [] and set(r.ranks.values()) == {4}


def _lycoris(path, names_shapes):
    """LoHa and LoKr modules in LyCORIS' key layout (KohakuBlueleaf/LyCORIS lycoris/modules/loha.py, lokr.py)."""
    state = {}
    for i, (name, (out, inp)) in enumerate(names_shapes):
        if i % 2 == 0:
            state |= {f"{name}.hada_w1_a": torch.randn(out, 4), f"{name}.hada_w1_b": torch.randn(4, inp),
                      f"{name}.hada_w2_a": torch.randn(out, 4), f"{name}.hada_w2_b": torch.randn(4, inp),
                      f"{name}.alpha": torch.tensor(4.0)}
        else:
            state |= {f"{name}.lokr_w1": torch.randn(4, 4), f"{name}.lokr_w2_a": torch.randn(out // 4, 2),
                      f"{name}.lokr_w2_b": torch.randn(2, inp // 4), f"{name}.alpha": torch.tensor(2.0)}
    save_file(state, str(path), metadata={"ss_network_module": "lycoris.kohya"})


def test_lycoris_loha_and_lokr_are_recognised_from_the_keys(kohya_and_diffusers, tmp_path):
    kohya, _ = kohya_and_diffusers
    state, _ = read(kohya)
    names = sorted(modules_of(state))[:6]
    shapes = [(name, tuple(state[name + ".lora_up.weight"].shape[:1]) + tuple(state[name + ".lora_down.weight"].shape[1:2]))
              for name in names]
    _lycoris(tmp_path / "ly.safetensors", shapes)
    r = inspect_lora(tmp_path / "ly.safetensors")
    assert r.format == "lycoris" and r.kinds == {"loha": 3, "lokr": 3}
    assert r.problems == [] and sum(r.modules.values()) == 6
    loha = [n for i, n in enumerate(names) if i % 2 == 0]
    assert all(r.ranks[n] == 4 for n in loha)


def test_problems_are_flagged(kohya_and_diffusers, tmp_path):
    kohya, _ = kohya_and_diffusers
    state, meta = read(kohya)
    names = sorted(modules_of(state))
    te = [n for n in names if n.startswith("lora_te_text_model_")][-1]  # not names[0] or names[1]
    bad = dict(state)
    bad[names[0] + ".lora_down.weight"] = torch.full_like(state[names[0] + ".lora_down.weight"], float("nan"))
    up = state[names[1] + ".lora_up.weight"]
    bad[names[1] + ".lora_up.weight"] = torch.zeros(up.shape[0], up.shape[1] + 1, *up.shape[2:], dtype=up.dtype)
    bad["some_other.weight_thing"] = torch.zeros(2)
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        bad[te.replace("lora_te_text_model_", "lora_te_") + suffix] = bad.pop(te + suffix)
        bad["lora_unet_down_blocks_0_attentions_0_no_such_layer" + suffix] = state[names[2] + suffix].clone()
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    r = inspect_lora(tmp_path / "bad.safetensors")
    codes = {p.code: p.message for p in r.problems}
    assert set(codes) == {"non_finite", "rank_mismatch", "unrecognised_keys", "te_ignored_name", "unknown_modules"}
    assert names[0] in codes["non_finite"] and names[1] in codes["rank_mismatch"]
    assert "some_other.weight_thing" in codes["unrecognised_keys"] and "no_such_layer" in codes["unknown_modules"]


def test_not_a_lora(tmp_path):
    save_file({"model.diffusion_model.x.weight": torch.zeros(2)}, str(tmp_path / "m.safetensors"))
    r = inspect_lora(tmp_path / "m.safetensors")
    assert r.format == "unknown" and [p.code for p in r.problems] == ["model_checkpoint"]
    save_file({"embedding": torch.zeros(2)}, str(tmp_path / "e.safetensors"))
    assert [p.code for p in inspect_lora(tmp_path / "e.safetensors").problems] == ["unknown_format"]


# -- the CLI --------------------------------------------------------------------------------------------------


def test_cli_inspect_json_and_exit_codes(kohya_and_diffusers, tmp_path, capsys):
    kohya, _ = kohya_and_diffusers
    assert main(["lora", "inspect", str(kohya), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "kohya" and report["rank"] == 4
    save_file({"x": torch.tensor([float("inf")]), "lora_unet_a.lora_down.weight": torch.zeros(1, 2)}, str(tmp_path / "b.safetensors"))
    assert main(["lora", "inspect", str(tmp_path / "b.safetensors")]) == 1
    assert "problems:" in capsys.readouterr().out
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    assert main(["lora", "inspect", str(tmp_path / "junk.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_cli_merge_resize_extract(tmp_path, capsys):
    a = make_lora(tmp_path / "a.safetensors", 1, dim=4, alpha=4)
    b = make_lora(tmp_path / "b.safetensors", 2, dim=2, alpha=1)
    assert main(["lora", "merge", f"{a}:0.5", str(b), "-o", str(tmp_path / "m.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["modules"] == len(modules_of(read(a)[0]))
    assert main(["lora", "merge", str(a), "-o", str(tmp_path / "m.safetensors")]) == 2  # exists: refused
    assert "not overwriting" in capsys.readouterr().err
    assert main(["lora", "resize", str(a), "--rank", "2", "-o", str(tmp_path / "r.safetensors"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["overall_fro_retained"] < 1 and {m["new_rank"] for m in out["modules"].values()} == {2}
    assert main(["lora", "resize", str(a), "-o", str(tmp_path / "r2.safetensors")]) == 2
    assert "--rank" in capsys.readouterr().err
    assert main(["lora", "resize", str(a), "--dynamic", "sv_fro", "--param", "0.95", "-o", str(tmp_path / "r3.safetensors")]) == 0
    assert "overall Frobenius retained" in capsys.readouterr().out
    base = save_tiny_single_file(tmp_path / "base.safetensors")
    config = tiny_config_dir(tmp_path / "config")
    from tests.test_lora_tools import _tuned_with_known_delta

    _tuned_with_known_delta(tmp_path / "tuned")
    assert main(["lora", "extract", str(base), str(tmp_path / "tuned"), "--rank", "2", "--min-diff", "0.0001",
                 "-o", str(tmp_path / "x.safetensors"), "--model-config", str(config), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the text encoder changed: every module of Kohya's LoRA set (the conv change needs --conv-rank), none left out
    assert out["extracted"] > 20 and out["skipped"] == [] and out["text_encoder_changed"] is True
    assert main(["lora", "merge-into", str(base), f"{tmp_path / 'x.safetensors'}:1", "-o", str(tmp_path / "baked.safetensors"),
                 "--model-config", str(config)]) == 0
    assert "weights changed" in capsys.readouterr().out
    with safe_open(str(tmp_path / "baked.safetensors"), "pt") as f:
        assert any(k.startswith("model.diffusion_model.") for k in f.keys())


def test_cli_errors_are_coded_for_the_gui(tmp_path, capsys):
    """With --progress-json (the GUI's way) an error also goes out as its code and parameters, which the page
    says in its language; the English `error:` line is the same message. A parameter that is itself a message
    (model/checkpoint's "LoRA file") travels too; an OSError is a sentence, not a traceback."""
    from loratrainer.gui.i18n import Translator
    from loratrainer.tools.messages import message_from_json

    def coded_error(argv):
        assert main(argv + ["--progress-json"]) == 2
        err = capsys.readouterr().err.splitlines()
        msg = message_from_json(json.loads(next(line for line in err if line.startswith('{"error"')))["error"])
        assert err[-1] == f"error: {msg}" and "Traceback" not in "\n".join(err)
        return msg

    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    msg = coded_error(["lora", "merge", str(tmp_path / "junk.safetensors"), "-o", str(tmp_path / "m.safetensors")])
    assert msg.code == "lora_tools.lora_unreadable"
    assert Translator("ko").message(msg).startswith(f"LoRA 파일 {tmp_path / 'junk.safetensors'} 을(를) 읽을 수 없습니다")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle either")
    msg = coded_error(["lora", "resize", str(tmp_path / "junk.pt"), "--rank", "2", "-o", str(tmp_path / "r.safetensors")])
    assert msg.code.startswith("model.") and msg.params["what"].code == "model.what.lora"
    assert str(msg).startswith("The LoRA file") and Translator("ko").message(msg).startswith("LoRA 파일 ")
    a = make_lora(tmp_path / "a.safetensors", 1, dim=2, alpha=1)
    msg = coded_error(["lora", "resize", str(a), "--rank", "1", "-o", str(tmp_path / "a.safetensors" / "r.safetensors")])
    assert msg.code == "lora_tools.file_system" and "파일 시스템이 거부했습니다" in Translator("ko").message(msg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "junk.pt", "junk.safetensors"]


def _big_lora(path, modules=300, width=2048, rank=32):
    torch.manual_seed(0)
    state = {}
    for i in range(modules):
        state[f"lora_unet_m{i}.lora_down.weight"] = torch.randn(rank, width)
        state[f"lora_unet_m{i}.lora_up.weight"] = torch.randn(width, rank)
        state[f"lora_unet_m{i}.alpha"] = torch.tensor(float(rank))
    save_file(state, str(path))
    return path


def test_sigterm_cancels_and_leaves_no_file(tmp_path):
    big = _big_lora(tmp_path / "big.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "loratrainer", "lora", "merge", str(big), str(big), "--rank", "8",
                             "-o", str(out / "m.safetensors"), "--progress-json"], stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if line.startswith("{"):
            assert json.loads(line)["total"] == 300
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(60) == 10, rest
    assert "Cancelled" in rest and "Traceback" not in rest
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("lora_type,kind", [("LoHa", "loha"), ("LoKr", "lokr")])
def test_our_own_loha_and_lokr_files_are_recognised_and_refused_by_merge(lora_type, kind, tmp_path):
    from loratrainer.errors import UserError
    from loratrainer.tools.merge import merge_loras

    config = with_values(TrainingConfig(), {"lora_type": lora_type, "network_dim": 4, "network_alpha": 2})
    handle = inject_lora(build_tiny_components(), config.network, train_unet=True, train_text_encoder=True)
    path = tmp_path / f"{kind}.safetensors"
    save_file(lora_state_dict(handle, torch.float32), str(path))
    r = inspect_lora(path)
    assert r.format == "lycoris" and set(r.kinds) == {kind} and r.problems == []
    assert sum(r.modules.values()) == len(handle.modules)
    with pytest.raises(UserError, match="LyCORIS"):
        merge_loras([(path, 1.0)], tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
