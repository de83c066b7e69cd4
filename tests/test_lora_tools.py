"""LoRA tools on the tiny SD1.5 with LoRAs of known factors: merge is exact, resize and merge --rank reach the
Eckart-Young optimum, extract recovers a known delta, merge-into equals diffusers' fuse_lora, and every output
loads in diffusers with no missing or unexpected keys under Kohya's names."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

from loratrainer.config import ModelSettings, TrainingConfig, with_values
from loratrainer.errors import UserError
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.loading import load_sd15
from loratrainer.model.lora import inject_lora
from loratrainer.model.metadata import with_safetensors_hashes
from loratrainer.tools.bake import bake_into_checkpoint, bake_into_diffusers
from loratrainer.tools.extract import extract_lora
from loratrainer.tools.lorafile import LoraFile
from loratrainer.tools.merge import merge_loras
from loratrainer.tools.weighted import parse_weighted
from loratrainer.tools.callbacks import Cancelled, Progress
from loratrainer.tools.resize import resize_lora
from loratrainer.tools.writer import StreamingSafetensorsWriter
from tests.test_model_saving import _Collect
from tests.tiny_sd import build_tiny_components, save_tiny_diffusers, save_tiny_single_file, tiny_config_dir, tiny_ldm_state_dict

KOHYA_KEY = re.compile(r"^lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def make_lora(path, seed, *, dim, alpha, conv_dim=2, conv_alpha=1.0, te=True, std=0.2):
    """A LoCon LoRA on the tiny model (UNet linear + 3x3 conv modules, text encoder) with random known factors."""
    config = with_values(TrainingConfig(), {"lora_type": "LoCon", "network_dim": dim, "network_alpha": alpha,
                                            "conv_dim": conv_dim, "conv_alpha": conv_alpha})
    handle = inject_lora(build_tiny_components(), config.network, train_unet=True, train_text_encoder=te)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in handle.unet_parameters() + handle.text_encoder_parameters():
            p.normal_(std=std)
    state = lora_state_dict(handle, torch.float32)
    save_file(state, str(path), metadata={"ss_network_dim": str(dim), "ss_base_model_version": "sd_v1",
                                          "ss_tag_frequency": json.dumps({"10_cat": {"cat": 4, "sitting": 2}})})
    return path


def delta(state_or_file, name):
    """alpha/rank * up @ down as [out, in*k*k] in float64, computed here from the raw tensors."""
    get = state_or_file.tensor if isinstance(state_or_file, LoraFile) else state_or_file.__getitem__
    down = get(name + ".lora_down.weight").double()
    up = get(name + ".lora_up.weight").double()
    alpha = float(get(name + ".alpha"))
    return alpha / down.shape[0] * (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1))


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def modules_of(state):
    return {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in state}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return make_lora(d / "a.safetensors", 1, dim=4, alpha=2), make_lora(d / "b.safetensors", 2, dim=8, alpha=8, conv_dim=4, conv_alpha=4)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"single": save_tiny_single_file(d / "tiny.safetensors"), "diffusers": save_tiny_diffusers(d / "tiny"),
            "config": tiny_config_dir(d / "config")}


def test_writer_gives_safetensors_data_and_kohya_hashes(tmp_path):
    torch.manual_seed(0)
    tensors = {"b.lora_up.weight": torch.randn(300, 4).half(), "a.lora_down.weight": torch.randn(4, 3000).half(),
               "a.alpha": torch.tensor(4.0).half(), "z": torch.randn(700, 700), "k": torch.randn(3, 3).bfloat16()}
    meta = {"ss_x": "1", "modelspec.title": "é t"}
    reference = safetensors_bytes(tensors, with_safetensors_hashes(tensors, meta))
    with StreamingSafetensorsWriter(tmp_path / "w.safetensors") as w:
        for k, v in tensors.items():
            w.add(k, v)
        w.finish(meta, kohya_hashes=True)
    ours = (tmp_path / "w.safetensors").read_bytes()
    state, got_meta = read(tmp_path / "w.safetensors")
    assert got_meta == with_safetensors_hashes(tensors, meta)
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
    # the data section (after the header) is byte for byte safetensors' own
    assert ours[8 + int.from_bytes(ours[:8], "little"):] == reference[8 + int.from_bytes(reference[:8], "little"):]
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left


def test_merge_without_rank_is_exact_including_conv_modules(loras, tmp_path):
    a, b = loras
    out = tmp_path / "m.safetensors"
    report = merge_loras([(a, 0.7), (b, -0.5)], out, precision="float")
    merged, meta = read(out)
    sa, sb = read(a)[0], read(b)[0]
    names = modules_of(merged)
    assert names == modules_of(sa) | modules_of(sb) and report.modules == len(names)
    convs = [n for n in names if merged[n + ".lora_down.weight"].ndim == 4 and merged[n + ".lora_down.weight"].shape[2] == 3]
    assert len(convs) >= 4  # LoCon's 3x3 convolutions are part of it
    for n in names:
        expected = 0.7 * delta(sa, n) - 0.5 * delta(sb, n)
        assert torch.allclose(delta(merged, n), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max())), n
        assert merged[n + ".lora_down.weight"].shape[0] == sa[n + ".lora_down.weight"].shape[0] + sb[n + ".lora_down.weight"].shape[0]
    assert all(KOHYA_KEY.match(k) for k in merged)
    merged_from = json.loads(meta["ss_merged_from"])
    assert [(m["file"], m["weight"]) for m in merged_from] == [("a.safetensors", 0.7), ("b.safetensors", -0.5)]
    assert "a.safetensors x 0.7" in meta["ss_training_comment"] and meta["sshs_model_hash"]


def _best_error(matrix, rank):
    s = torch.linalg.svdvals(matrix)
    return float(s[rank:].pow(2).sum().sqrt())


def test_merge_with_rank_is_the_best_rank_r_approximation(loras, tmp_path):
    a, b = loras
    out = tmp_path / "m3.safetensors"
    report = merge_loras([(a, 1.0), (b, 0.5)], out, rank=3, conv_rank=2, precision="float")
    merged, _ = read(out)
    sa, sb = read(a)[0], read(b)[0]
    for n in modules_of(merged):
        target = delta(sa, n) + 0.5 * delta(sb, n)
        conv = merged[n + ".lora_down.weight"].ndim == 4 and merged[n + ".lora_down.weight"].shape[2] == 3
        r = 2 if conv else 3
        assert merged[n + ".lora_down.weight"].shape[0] == r
        error = float((delta(merged, n) - target).norm())
        assert error == pytest.approx(_best_error(target, r), rel=1e-4, abs=1e-6), n
        kept = (1 - (error / float(target.norm())) ** 2) ** 0.5
        assert report.fro_retained[n] == pytest.approx(kept, abs=1e-4)


def test_resize_error_is_eckart_young_and_reported(loras, tmp_path):
    _, b = loras
    out = tmp_path / "r.safetensors"
    report = resize_lora(b, out, rank=3, precision="float")
    resized, meta = read(out)
    original = read(b)[0]
    for n in modules_of(original):
        target = delta(original, n)
        r = min(3, original[n + ".lora_down.weight"].shape[0])
        assert resized[n + ".lora_down.weight"].shape[0] == r
        error = float((delta(resized, n) - target).norm())
        assert error == pytest.approx(_best_error(target, r), rel=1e-4, abs=1e-6), n
        assert report.modules[n].fro_retained == pytest.approx((1 - (error / float(target.norm())) ** 2) ** 0.5, abs=1e-4)
    assert 0 < report.overall_fro_retained < 1
    assert meta["ss_network_dim"] == "3" and "resized" in meta["ss_training_comment"]
    assert meta["ss_tag_frequency"] == read(b)[1]["ss_tag_frequency"]  # the training record is kept


# sd-scripts networks/resize_lora.py (commit 48d368fa): its dynamic rules, applied here to the full SVD of the
# full weight matrix as Kohya does, to check ours (computed from the factors) choose the same ranks.
def _kohya_rank(s, method, param, cap):
    n = len(s)
    if method == "sv_ratio":
        index = int(torch.sum(s > s[0] / param).item())
    elif method == "sv_cumulative":
        index = int(torch.searchsorted(torch.cumsum(s, 0) / float(s.sum()), param)) + 1
    else:
        index = int(torch.searchsorted(torch.cumsum(s.pow(2), 0) / float(s.pow(2).sum()), param**2)) + 1
    new_rank = max(1, min(index, n - 1)) + 1
    return min(new_rank, cap)


@pytest.mark.parametrize("method,param", [("sv_ratio", 4.0), ("sv_fro", 0.9), ("sv_cumulative", 0.8)])
def test_dynamic_resize_keeps_what_kohyas_rule_says(loras, tmp_path, method, param):
    _, b = loras
    out = tmp_path / f"{method}.safetensors"
    report = resize_lora(b, out, rank=6, dynamic=method, param=param, precision="float")
    resized, meta = read(out)
    original = read(b)[0]
    ranks = set()
    for n in modules_of(original):
        target = delta(original, n)
        s = torch.linalg.svdvals(target.float())
        old = original[n + ".lora_down.weight"].shape[0]
        expected = min(_kohya_rank(s, method, param, 6), old)
        assert report.modules[n].new_rank == expected == resized[n + ".lora_down.weight"].shape[0], n
        ranks.add(expected)
        assert float((delta(resized, n) - target).norm()) == pytest.approx(_best_error(target, expected), rel=1e-3, abs=1e-6)
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"  # resize_lora.py: any dynamic resize


def _tuned_with_known_delta(folder, seed=0):
    """The tiny model with rank-2 changes added to a few UNet, conv and text encoder weights; returns the deltas."""
    parts = build_tiny_components(seed)
    torch.manual_seed(5)
    changed = {}
    targets = [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
               ("unet", "up_blocks.1.attentions.0.proj_in"),
               ("unet", "down_blocks.0.resnets.0.conv1"),
               ("text_encoder", "text_model.encoder.layers.0.mlp.fc1")]
    with torch.no_grad():
        for part, path in targets:
            model = getattr(parts, part)
            path = path if part == "unet" or hasattr(model, "text_model") else path.removeprefix("text_model.")
            w = model.get_submodule(path).weight
            m = (torch.randn(w.shape[0], 2) @ torch.randn(2, w[0].numel())) * 0.2
            w += m.reshape(w.shape)
            changed[(part, path)] = m
    parts.pipeline().save_pretrained(folder, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in tiny_ldm_state_dict(parts).items()}, str(folder) + ".safetensors")
    return changed


def _kohya_modules(tiny_models, conv: bool = False) -> set[str]:
    from loratrainer.tools.model_weights import ModelWeights

    weights = ModelWeights(tiny_models["single"], config_dir=tiny_models["config"])
    return {name for c in {False, conv} for _, name, _ in weights.targets(conv=c)}


def test_extract_recovers_a_known_delta_and_extracts_every_module_as_kohya(tiny_models, tmp_path):
    from loratrainer.model.lora import kohya_name

    changed = _tuned_with_known_delta(tmp_path / "tuned")
    out = tmp_path / "x.safetensors"
    report = extract_lora(tiny_models["single"], tmp_path / "tuned", out, rank=4, conv_rank=2, min_diff=1e-4,
                          config_dir=tiny_models["config"])
    state, meta = read(out)
    expected = {kohya_name(part, path): m for (part, path), m in changed.items()}
    # the text encoder changed (by more than min_diff), so all of Kohya's modules are there, as its script writes them
    assert report.text_encoder_changed and report.skipped == []
    assert modules_of(state) == set(report.extracted) == _kohya_modules(tiny_models, conv=True)
    for name, m in expected.items():
        got = delta(state, name)
        assert float((got - m.double()).abs().max()) < 1e-4 * float(m.abs().max()), name
        assert report.extracted[name] == pytest.approx(1.0, abs=1e-6)
    assert all(float(delta(state, n).abs().max()) < 1e-6 for n in modules_of(state) - set(expected))  # unchanged: 0
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4.0" and json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2.0"}
    # the same from two single files and from two diffusers folders (each read tensor by tensor)
    for b, t in ((tiny_models["single"], tmp_path / "tuned.safetensors"), (tiny_models["diffusers"], tmp_path / "tuned")):
        other = extract_lora(b, t, tmp_path / f"x-{t.name}", rank=4, conv_rank=2, min_diff=1e-4,
                             config_dir=tiny_models["config"])
        again, _ = read(other.output)
        assert again.keys() == state.keys(), t.name
        assert all(torch.allclose(delta(again, n), delta(state, n), atol=1e-5) for n in expected), t.name


def test_min_diff_decides_whether_the_text_encoder_changed_as_kohya_does(tiny_models, tmp_path):
    """sd-scripts networks/extract_lora_from_models.py: the text encoder counts as changed when one of its weights
    differs by more than min_diff; otherwise "Text encoder is same. Extract U-Net only." min_diff never drops a UNet
    module. Here one UNet weight changes by 0.05 and one text encoder weight by 0.003."""
    parts = build_tiny_components(0)  # the base model's weights (tiny_models["single"])
    with torch.no_grad():
        parts.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q").weight[0, 0] += 0.05
        fc2 = next(m for n, m in parts.text_encoder.named_modules() if n.endswith("encoder.layers.1.mlp.fc2"))
        fc2.weight[0, 0] += 0.003
    tuned = tmp_path / "tuned.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_ldm_state_dict(parts).items()}, str(tuned))
    unet = {n for n in _kohya_modules(tiny_models) if n.startswith("lora_unet_")}
    te = _kohya_modules(tiny_models) - unet
    for min_diff, te_changed in ((0.01, False), (0.002, True), (0.003 * 1.01, False)):
        out = tmp_path / f"x-{min_diff}.safetensors"
        report = extract_lora(tiny_models["single"], tuned, out, rank=2, min_diff=min_diff, config_dir=tiny_models["config"])
        written = modules_of(read(out)[0])
        assert report.text_encoder_changed is te_changed, min_diff
        assert written == (unet | te if te_changed else unet), min_diff  # every UNet module, whatever its difference
        assert sorted(report.skipped) == ([] if te_changed else sorted(te)), min_diff
    # both models the same (within min_diff): no file, one sentence
    with pytest.raises(UserError, match="no LoRA to extract"):
        extract_lora(tiny_models["single"], tiny_models["single"], tmp_path / "same.safetensors", rank=2,
                     config_dir=tiny_models["config"])
    assert not (tmp_path / "same.safetensors").exists()


def _fused_reference(tiny_models, loras_and_weights):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["diffusers"], safety_checker=None, local_files_only=True)
    names = []
    for i, (path, _) in enumerate(loras_and_weights):
        pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
        names.append(f"l{i}")
    pipe.set_adapters(names, [w for _, w in loras_and_weights])
    pipe.fuse_lora(adapter_names=names)
    pipe.unload_lora_weights()  # keeps the fused weights
    return pipe


def _assert_same_weights(ours, theirs, changed_at_least):
    differing = 0
    base = build_tiny_components()
    for part in ("unet", "text_encoder"):
        mine, ref = getattr(ours, part).state_dict(), getattr(theirs, part).state_dict()
        assert mine.keys() == ref.keys()
        original = getattr(base, part).state_dict()
        for k in mine:
            assert torch.allclose(mine[k], ref[k], atol=2e-5, rtol=1e-5), k
            differing += not torch.equal(original[k], mine[k])
    assert differing >= changed_at_least


def test_merge_into_single_file_equals_diffusers_fuse_lora(loras, tiny_models, tmp_path):
    a, b = loras
    out = tmp_path / "baked.safetensors"
    report = bake_into_checkpoint(tiny_models["single"], [(a, 0.8), (b, -0.3)], out, config_dir=tiny_models["config"])
    # the original layout is kept: the same keys, dtypes and shapes as the input, as A1111/ComfyUI expect
    with safe_open(str(out), "pt") as f, safe_open(str(tiny_models["single"]), "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())
        assert all(f.get_slice(k).get_shape() == g.get_slice(k).get_shape() for k in f.keys())
    ours = load_sd15(ModelSettings(pretrained_model_name_or_path=str(out)), config_dir=tiny_models["config"])
    _assert_same_weights(ours, _fused_reference(tiny_models, [(a, 0.8), (b, -0.3)]), report.modules_changed)


def test_merge_into_diffusers_folder_equals_fuse_lora(loras, tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    a, _ = loras
    out = tmp_path / "baked"
    bake_into_diffusers(tiny_models["diffusers"], [(a, 1.2)], out)
    with _Collect() as log:
        ours = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, local_files_only=True)
    assert log.key_problems() == []
    _assert_same_weights(ours, _fused_reference(tiny_models, [(a, 1.2)]), 50)
    # the rest of the folder is copied as it was
    source = tiny_models["diffusers"]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(p.relative_to(source) for p in source.rglob("*"))
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        source / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_merge_into_diffusers_from_a_single_file_equals_fuse_lora(loras, tiny_models, tmp_path):
    """A single file written as a diffusers folder tensor by tensor: every component loads with no missing or
    unexpected keys, the LoRA weights equal fuse_lora's and the VAE is the checkpoint's own."""
    from diffusers import StableDiffusionPipeline

    a, b = loras
    out = tmp_path / "baked"
    bake_into_diffusers(tiny_models["single"], [(a, 0.8), (b, -0.3)], out, config_dir=tiny_models["config"])
    with _Collect() as log:
        pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, local_files_only=True)
    assert log.key_problems() == []
    _assert_same_weights(pipe, _fused_reference(tiny_models, [(a, 0.8), (b, -0.3)]), 50)
    base_vae = build_tiny_components().vae.state_dict()
    assert all(torch.equal(v, base_vae[k]) for k, v in pipe.vae.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["baked"]  # no temporary folder left


def test_a_bin_diffusers_folder_is_baked_into_safetensors(loras, tiny_models, tmp_path):
    """An older diffusers folder with .bin weights (torch zip archives, read memory-mapped): the baked folder has
    its unet/ and text_encoder/ as .safetensors under the names diffusers loads, and equals fuse_lora."""
    from diffusers import StableDiffusionPipeline

    a, _ = loras
    source = tmp_path / "bin"
    build_tiny_components().pipeline().save_pretrained(source, safe_serialization=False)
    assert (source / "unet" / "diffusion_pytorch_model.bin").exists()
    bake_into_diffusers(source, [(a, 1.2)], tmp_path / "baked")
    out = tmp_path / "baked"
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert "model.safetensors" in [p.name for p in (out / "text_encoder").iterdir()]
    with _Collect() as log:
        ours = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, local_files_only=True)
    assert log.key_problems() == []
    _assert_same_weights(ours, _fused_reference(tiny_models, [(a, 1.2)]), 50)


def test_every_output_loads_in_diffusers_under_kohya_names(loras, tiny_models, tmp_path):
    a, b = loras
    outputs = [
        merge_loras([(a, 1.0), (b, 1.0)], tmp_path / "m.safetensors").output,
        merge_loras([(a, 1.0), (b, 1.0)], tmp_path / "m2.safetensors", rank=2).output,
        resize_lora(b, tmp_path / "r.safetensors", rank=2).output,
        resize_lora(b, tmp_path / "d.safetensors", rank=8, dynamic="sv_fro", param=0.8).output,
    ]
    _tuned_with_known_delta(tmp_path / "tuned")
    outputs.append(extract_lora(tiny_models["single"], tmp_path / "tuned", tmp_path / "x.safetensors", rank=2,
                                conv_rank=2, min_diff=1e-4, config_dir=tiny_models["config"]).output)
    for path in outputs:
        state, _ = read(path)
        assert all(KOHYA_KEY.match(k) for k in state), path.name
        pipe = build_tiny_components().pipeline()
        with _Collect() as log:
            pipe.load_lora_weights(str(path))
        assert log.key_problems() == [], path.name
        adapted = {n for part in ("unet", "text_encoder") for n, m in getattr(pipe, part).named_modules() if hasattr(m, "lora_A")}
        assert len(adapted) == len(modules_of(state)), path.name


def test_cancel_leaves_no_file(loras, tmp_path):
    a, b = loras
    calls = []
    progress = Progress(report=lambda d, t, w: calls.append(d), cancelled=lambda: len(calls) >= 5)
    with pytest.raises(Cancelled):
        merge_loras([(a, 1.0), (b, 1.0)], tmp_path / "m.safetensors", progress=progress)
    assert list(tmp_path.iterdir()) == []


def test_outputs_never_overwrite(loras, tiny_models, tmp_path):
    from loratrainer.model.errors import OutputExists

    a, b = loras
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"mine")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    model, config = tiny_models["single"], tiny_models["config"]
    for call in (lambda: merge_loras([(a, 1.0)], out), lambda: resize_lora(b, out, rank=2),
                 lambda: bake_into_checkpoint(model, [(a, 1.0)], out, config_dir=config),
                 lambda: bake_into_diffusers(model, [(a, 1.0)], folder, config_dir=config),
                 lambda: extract_lora(model, tiny_models["diffusers"], out, rank=2, config_dir=config)):
        with pytest.raises(OutputExists):
            call()
    assert out.read_bytes() == b"mine" and [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "mine"]


def test_the_tools_light_constants_match_the_models():
    from loratrainer.model import kohya_format, metadata
    from loratrainer.tools import common

    assert (common.DOWN, common.UP, common.ALPHA, common.SAVE_DTYPES) == (
        kohya_format.DOWN, kohya_format.UP, kohya_format.ALPHA, kohya_format.SAVE_DTYPES)
    assert common.MODELSPEC_VERSION == metadata.MODELSPEC_VERSION


def test_weights_parse_from_file_specs():
    from pathlib import Path

    assert parse_weighted("a.safetensors:0.5") == (Path("a.safetensors"), 0.5)
    assert parse_weighted("a.safetensors") == (Path("a.safetensors"), 1.0)
    assert parse_weighted("C:") == (Path("C:"), 1.0)
    assert parse_weighted("dir:x/a.safetensors:-1") == (Path("dir:x/a.safetensors"), -1.0)
