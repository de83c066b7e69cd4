"""`loratrainer lora ...` on SDXL (issue 21): Kohya SDXL LoRAs (lora_unet_input_blocks_*, lora_te1_, lora_te2_) and
SDXL checkpoints, as a single file in the original layout (sd-scripts library/sdxl_model_util.py: UNet under
model.diffusion_model.*, CLIP ViT-L under conditioner.embedders.0.transformer.*, OpenCLIP ViT-bigG under
conditioner.embedders.1.model.* with q/k/v fused in attn.in_proj_weight) and as a diffusers folder.

The models are small hand-made state dicts with the real key names (widths shrunk); where a mapping can be
checked against another implementation it is: the second text encoder's fused q/k/v against diffusers' own
convert_open_clip_checkpoint, the folder's UNet names against sd-scripts' make_unet_conversion_map rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loratrainer.cli import main
from loratrainer.tools.bake import bake_into_checkpoint, bake_into_diffusers
from loratrainer.tools.extract import extract_lora
from loratrainer.tools.inspection import inspect_lora
from loratrainer.tools.merge import merge_loras
from loratrainer.tools.resize import resize_lora

W, CTX, T1, T2 = 8, 6, 6, 10  # UNet width, cross-attention width, te1 and te2 widths
U = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer.text_model."
TE2 = "conditioner.embedders.1.model."
SDXL_META = {"ss_base_model_version": "sdxl_base_v1-0", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
             "ss_network_module": "networks.lora"}


def sdxl_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(torch.float16)  # noqa: E731
    state = {U + "input_blocks.0.0.weight": r(W, 4, 3, 3), U + "label_emb.0.0.weight": r(W, 12),
             "first_stage_model.encoder.conv_in.weight": r(4, 3, 3, 3)}
    for block in ("input_blocks.4.1", "middle_block.1", "output_blocks.2.1"):
        state[f"{U}{block}.proj_in.weight"] = r(W, W)
        b = f"{U}{block}.transformer_blocks.0."
        for name in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0"):
            state[b + name + ".weight"] = r(W, W)
        state[b + "attn2.to_k.weight"], state[b + "attn2.to_v.weight"] = r(W, CTX), r(W, CTX)
        state[b + "ff.net.0.proj.weight"], state[b + "ff.net.2.weight"] = r(4 * W, W), r(W, 2 * W)
        state[b + "attn1.to_out.0.bias"] = r(W)
    for i in range(2):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{TE1}encoder.layers.{i}.self_attn.{name}.weight"] = r(T1, T1)
        state[f"{TE1}encoder.layers.{i}.mlp.fc1.weight"], state[f"{TE1}encoder.layers.{i}.mlp.fc2.weight"] = r(2 * T1, T1), r(T1, 2 * T1)
        blk = f"{TE2}transformer.resblocks.{i}."
        state[blk + "attn.in_proj_weight"], state[blk + "attn.in_proj_bias"] = r(3 * T2, T2), r(3 * T2)
        state[blk + "attn.out_proj.weight"] = r(T2, T2)
        state[blk + "mlp.c_fc.weight"], state[blk + "mlp.c_proj.weight"] = r(2 * T2, T2), r(T2, 2 * T2)
    return state


MODULES = {  # Kohya SDXL name -> (out, in) of the weight it adapts
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (W, W),
    "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k": (W, CTX),
    "lora_unet_output_blocks_2_1_proj_in": (W, W),
    "lora_te1_text_model_encoder_layers_1_self_attn_v_proj": (T1, T1),
    "lora_te2_text_model_encoder_layers_0_self_attn_k_proj": (T2, T2),  # rows 10-19 of the fused in_proj_weight
    "lora_te2_text_model_encoder_layers_1_mlp_fc1": (2 * T2, T2),
}


def sdxl_lora(path: Path, rank: int = 2, seed: int = 1) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out, inp) in MODULES.items():
        tensors[name + ".lora_down.weight"] = torch.randn(rank, inp, generator=g)
        tensors[name + ".lora_up.weight"] = torch.randn(out, rank, generator=g)
        tensors[name + ".alpha"] = torch.tensor(float(rank) / 2)
    save_file(tensors, str(path), metadata=SDXL_META)
    return path


def delta(lora: dict, name: str) -> torch.Tensor:
    down, up, alpha = lora[name + ".lora_down.weight"], lora[name + ".lora_up.weight"], lora[name + ".alpha"]
    return (up @ down) * (float(alpha) / down.shape[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-tools")
    save_file(sdxl_state(), str(root / "sdxl.safetensors"), metadata={"modelspec.title": "tiny sdxl"})
    return {"root": root, "model": root / "sdxl.safetensors", "lora": sdxl_lora(root / "xl_lora.safetensors")}


def test_inspect_says_sdxl_and_finds_nothing_wrong(files):
    report = inspect_lora(files["lora"])
    assert report.family == "sdxl" and report.problems == []
    assert report.modules == {"unet": 3, "text_encoder": 3} and set(report.ranks.values()) == {2}


def test_merge_into_an_sdxl_single_file_adds_each_delta_where_it_belongs(files, tmp_path):
    out = tmp_path / "merged.safetensors"
    report = bake_into_checkpoint(files["model"], [(files["lora"], 0.5)], out)
    assert report.modules_changed == len(MODULES)  # one checkpoint key each (te2 layer 0 k: its fused in_proj_weight)
    before, after, lora = sdxl_state(), load_file(str(out)), load_file(str(files["lora"]))
    assert set(after) == set(before) and all(after[k].dtype == torch.float16 for k in after)  # layout and dtype kept
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["modelspec.title"] == "tiny sdxl"
    where = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (U + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", None),
        "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k": (U + "middle_block.1.transformer_blocks.0.attn2.to_k.weight", None),
        "lora_unet_output_blocks_2_1_proj_in": (U + "output_blocks.2.1.proj_in.weight", None),
        "lora_te1_text_model_encoder_layers_1_self_attn_v_proj": (TE1 + "encoder.layers.1.self_attn.v_proj.weight", None),
        "lora_te2_text_model_encoder_layers_0_self_attn_k_proj": (TE2 + "transformer.resblocks.0.attn.in_proj_weight", (T2, 2 * T2)),
        "lora_te2_text_model_encoder_layers_1_mlp_fc1": (TE2 + "transformer.resblocks.1.mlp.c_fc.weight", None),
    }
    changed = set()
    for name, (key, rows) in where.items():
        got = after[key].float() - before[key].float()
        if rows:
            got = got[rows[0]:rows[1]]
        torch.testing.assert_close(got, 0.5 * delta(lora, name), atol=2e-2, rtol=2e-2)
        changed.add(key)
    fused = TE2 + "transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(after[fused][:T2], before[fused][:T2]) and torch.equal(after[fused][2 * T2:], before[fused][2 * T2:])
    assert all(torch.equal(after[k], before[k]) for k in before if k not in changed)


def test_the_fused_q_k_v_mapping_is_the_one_diffusers_converts_with(files, tmp_path):
    # diffusers' own OpenCLIP -> CLIPTextModelWithProjection conversion of the merged file: the k_proj it splits
    # off in_proj_weight is the one that took lora_te2_..._self_attn_k_proj's delta
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    out = tmp_path / "merged.safetensors"
    bake_into_checkpoint(files["model"], [(files["lora"], 1.0)], out)
    text_model = SimpleNamespace(config=SimpleNamespace(hidden_size=T2))
    before = convert_open_clip_checkpoint(text_model, sdxl_state(), prefix=TE2)
    after = convert_open_clip_checkpoint(text_model, load_file(str(out)), prefix=TE2)
    lora = load_file(str(files["lora"]))
    for diffusers_key, name in (("text_model.encoder.layers.0.self_attn.k_proj.weight", "lora_te2_text_model_encoder_layers_0_self_attn_k_proj"),
                                ("text_model.encoder.layers.1.mlp.fc1.weight", "lora_te2_text_model_encoder_layers_1_mlp_fc1")):
        assert name == "lora_te2_" + diffusers_key.removesuffix(".weight").replace(".", "_")  # Kohya's name is the diffusers path
        torch.testing.assert_close(after[diffusers_key].float() - before[diffusers_key].float(), delta(lora, name), atol=2e-2, rtol=2e-2)
    for unchanged in ("text_model.encoder.layers.0.self_attn.q_proj.weight", "text_model.encoder.layers.0.self_attn.v_proj.weight"):
        assert torch.equal(after[unchanged], before[unchanged])


def test_extract_from_two_sdxl_single_files_recovers_the_lora(files, tmp_path):
    tuned = tmp_path / "tuned.safetensors"
    bake_into_checkpoint(files["model"], [(files["lora"], 1.0)], tuned)
    out = tmp_path / "extracted.safetensors"
    report = extract_lora(files["model"], tuned, out, rank=2, min_diff=1e-3)
    got, lora = load_file(str(out)), load_file(str(files["lora"]))
    # every UNet module is extracted, as sd-scripts does (min_diff decides only about the text encoders); the ones
    # that changed are exactly the adapted modules, by their Kohya SDXL names
    assert set(MODULES) <= set(report.extracted)
    assert {n for n in report.extracted if float(delta(got, n).abs().max()) > 1e-6} == set(MODULES)
    for name in MODULES:
        torch.testing.assert_close(delta(got, name), delta(lora, name), atol=3e-2, rtol=3e-2)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert inspect_lora(out).family == "sdxl"


def test_extract_with_a_conv_rank_from_sdxl_is_refused_in_one_sentence(files, tmp_path, capsys):
    code = main(["lora", "extract", str(files["model"]), str(files["model"]), "-o", str(tmp_path / "x.safetensors"), "--rank", "2", "--conv-rank", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "SDXL" in err and "--conv-rank" in err and "Traceback" not in err


def sdxl_folder(root: Path, state: dict[str, torch.Tensor]) -> Path:
    """A diffusers SDXL folder holding the same weights under diffusers' names: the UNet's attention blocks renamed
    as sd-scripts' make_unet_conversion_map does, the text encoders in transformers' layout."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    renames = {"input_blocks.4.1.": "down_blocks.1.attentions.0.", "middle_block.1.": "mid_block.attentions.0.",
               "output_blocks.2.1.": "up_blocks.0.attentions.2."}
    unet = {}
    for key, t in state.items():
        if key.startswith(U):
            inner = key[len(U):]
            for old, new in renames.items():
                if inner.startswith(old):
                    unet[new + inner[len(old):]] = t
    te1 = {k[len("conditioner.embedders.0.transformer."):]: t for k, t in state.items() if k.startswith(TE1)}
    te2 = convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=T2)), state, prefix=TE2)
    for part, tensors in (("unet", unet), ("text_encoder", te1), ("text_encoder_2", te2)):
        (root / part).mkdir(parents=True)
        name = "diffusion_pytorch_model.safetensors" if part == "unet" else "model.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(root / part / name))
        (root / part / "config.json").write_text("{}")
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    return root


def test_merge_into_an_sdxl_diffusers_folder_and_extract_from_folders(files, tmp_path):
    folder = sdxl_folder(tmp_path / "xl", sdxl_state())
    out = tmp_path / "xl-merged"
    report = bake_into_diffusers(folder, [(files["lora"], 1.0)], out)
    assert report.modules_changed == len(MODULES)
    lora = load_file(str(files["lora"]))
    unet_before = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    unet_after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"  # input_blocks.4.1 in the original layout
    torch.testing.assert_close(unet_after[key].float() - unet_before[key].float(),
                               delta(lora, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"), atol=2e-2, rtol=2e-2)
    te2_before = load_file(str(folder / "text_encoder_2" / "model.safetensors"))
    te2_after = load_file(str(out / "text_encoder_2" / "model.safetensors"))
    key = "text_model.encoder.layers.0.self_attn.k_proj.weight"
    torch.testing.assert_close(te2_after[key].float() - te2_before[key].float(),
                               delta(lora, "lora_te2_text_model_encoder_layers_0_self_attn_k_proj"), atol=2e-2, rtol=2e-2)
    assert (out / "model_index.json").is_file()
    extracted = extract_lora(folder, out, tmp_path / "from-folders.safetensors", rank=2, min_diff=1e-3)
    got = load_file(str(tmp_path / "from-folders.safetensors"))
    assert {n for n in extracted.extracted if float(delta(got, n).abs().max()) > 1e-6} == set(MODULES)


def test_merge_into_diffusers_from_an_sdxl_single_file_is_refused_in_one_sentence(files, tmp_path, capsys):
    code = main(["lora", "merge-into", str(files["model"]), str(files["lora"]), "--diffusers", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2 and "SDXL single file" in err and "Traceback" not in err and not (tmp_path / "d").exists()


def test_an_sdxl_lora_on_an_sd15_model_is_refused_naming_the_module(files, tmp_path, capsys):
    from tests.tiny_sd import save_tiny_single_file

    sd15 = save_tiny_single_file(tmp_path / "sd15.safetensors")
    code = main(["lora", "merge-into", str(sd15), str(files["lora"]), "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "lora_" in err and "Traceback" not in err


def test_merge_and_resize_keep_sdxl_names_and_metadata(files, tmp_path):
    other = sdxl_lora(tmp_path / "other.safetensors", seed=7)
    merged = tmp_path / "merged-lora.safetensors"
    merge_loras([(files["lora"], 1.0), (other, 0.5)], merged, rank=4)
    resized = tmp_path / "resized.safetensors"
    resize_lora(merged, resized, rank=2)
    for path in (merged, resized):
        names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in load_file(str(path))}
        assert names == set(MODULES)
        report = inspect_lora(path)
        assert report.family == "sdxl" and report.problems == []
        assert report.metadata["ss_base_model_version"] == "sdxl_base_v1-0"


# -- the tiny SDXL of tests/tiny_sdxl.py: the same weights as a single file and as a diffusers folder -------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny_sdxl import save_tiny_sdxl_diffusers, save_tiny_sdxl_single_file

    root = tmp_path_factory.mktemp("tiny-sdxl")
    return save_tiny_sdxl_single_file(root / "tiny-xl.safetensors", seed=3), save_tiny_sdxl_diffusers(root / "tiny-xl", seed=3)


def test_a_single_file_and_its_diffusers_folder_name_the_same_weights_alike(tiny):
    # the single file's names (original layout, te2's fused q/k/v cut in three) and the folder's (the trainer's own
    # model.sdxl_names) must pick the same tensor for every module a LoRA adapts
    from loratrainer.tools.model_weights import ModelWeights

    single, folder = ModelWeights(tiny[0]), ModelWeights(tiny[1])
    targets = single.targets(conv=False)
    assert {n for _, n, _ in targets} == {n for _, n, _ in folder.targets(conv=False)}
    assert any(n.startswith("lora_te2_") and n.endswith("_k_proj") for _, n, _ in targets)
    for _, name, shape in targets:
        assert torch.equal(single.weight(name, shape), folder.weight(name, shape)), name


def test_the_trainers_module_set_is_what_the_tools_find(tiny):
    # Standard LoRA's targets the tools find in the single file are exactly the modules the trainer injects into
    # (model.lora.target_modules on the tiny SDXL, named by model.lora.kohya_name)
    from loratrainer.model.lora import kohya_name, target_modules
    from loratrainer.tools.model_weights import ModelWeights
    from tests.tiny_sdxl import build_tiny_sdxl

    c = build_tiny_sdxl(seed=3)
    trainer = {kohya_name(part, path, family="sdxl", unet=c.unet)
               for part, model in (("unet", c.unet), ("text_encoder", c.text_encoder), ("text_encoder_2", c.text_encoder_2))
               for path in target_modules(model, part, conv=False)}
    assert {n for _, n, _ in ModelWeights(tiny[0]).targets(conv=False)} == trainer
