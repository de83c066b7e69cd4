"""The SDXL model layer on a tiny SDXL built from config with the real classes (tests/tiny_sdxl.py): loading
(diffusers folder, original-layout single file, v-pred markers) offline through the one loader, family
detection, LoRA injection with Kohya's SDXL names, the file diffusers' StableDiffusionXLPipeline loads, the
ss_*/modelspec metadata sd-scripts writes for SDXL, and network_weights.

The full-size module set against sd-scripts' own is tests/test_model_sdxl_full_size.py.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loratrainer.config import ModelSettings, NetworkSettings, TrainingConfig
from loratrainer.errors import UserError
from loratrainer.model.checkpoint import detect_family
from loratrainer.model.components import folder_family, load_components
from loratrainer.model.errors import NetworkWeightsMismatch
from loratrainer.model.kohya_format import load_network_weights, lora_state_dict
from loratrainer.model.lora import inject_lora
from loratrainer.model.metadata import ModelInfo, TrainingProgress, build_metadata
from loratrainer.model.saving import save_diffusers_lora, save_lora
from loratrainer.model.sdxl import NotSDXLCheckpoint, load_sdxl
from tests.test_model_saving import DATASET, _Collect
from tests.tiny_sd import build_tiny_components, save_tiny_single_file, tiny_config_dir
from tests.tiny_sdxl import (
    IMAGE_SIZE, TEXT1_HIDDEN, TEXT2_HIDDEN, build_tiny_sdxl, save_tiny_sdxl_diffusers, save_tiny_sdxl_single_file,
    tiny_sdxl_config_dir, tiny_sdxl_ldm_state_dict,
)

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sdxl")
    return {
        "folder": save_tiny_sdxl_diffusers(root / "folder"),
        "vpred_folder": save_tiny_sdxl_diffusers(root / "vpred", v_prediction=True),
        "file": save_tiny_sdxl_single_file(root / "tiny-xl.safetensors", dtype=torch.float16),
        "vpred_file": save_tiny_sdxl_single_file(root / "noob-vpred.safetensors", v_prediction=True),
        "config": tiny_sdxl_config_dir(root / "config"),
        "root": root,
    }


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(path, **kw):
    return load_components(ModelSettings(pretrained_model_name_or_path=str(path), **kw.pop("settings", {})), **kw)


def assert_same_weights(a, b, atol=0.0):
    for part in PARTS:
        x, y = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert x.keys() == y.keys(), part
        assert all(torch.allclose(x[k].float(), y[k].float(), atol=atol) for k in x), part


# -- loading ------------------------------------------------------------------------------------------------


def test_single_file_in_the_original_layout_loads_offline_as_sdxl(tiny, no_network):
    keys = safe_open(str(tiny["file"]), "pt").keys()
    assert {k.split(".")[0] for k in keys} == {"model", "conditioner", "first_stage_model"}
    assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight") for k in keys)
    c = load(tiny["file"], config_dir=tiny["config"])
    assert c.family == "sdxl" and type(c).__name__ == "SDXLComponents"
    assert c.source.startswith("single file") and c.model_name == "tiny-xl.safetensors" and len(c.model_hash) == 8
    assert c.unet.dtype == torch.float32  # the caller's dtype, whatever the file holds (fp16 here)
    # diffusers' own converter gives back exactly the weights the file was written from (fp16-rounded)
    assert_same_weights(c, build_tiny_sdxl(), atol=1e-2)
    assert not any(p.requires_grad for part in PARTS for p in getattr(c, part).parameters())
    assert c.tokenizer_2.pad_token == "!" and c.tokenizer.pad_token == "<|endoftext|>"
    assert c.declared_prediction == "" and not c.declared_zero_terminal_snr


def test_shipped_sdxl_tokenizers_are_built_from_the_sd15_vocabulary(tiny, no_network, tmp_path):
    """assets/sdxl ships only the two tokenizer configs, not a second and third copy of CLIP's vocabulary (3 MB;
    it is assets/sd15's): both SDXL tokenizers still encode a caption to the ids the copies gave, tokenizer_2
    padding with "!" (id 0) as SDXL's does, and a single file loaded with configs that hold no tokenizer of
    their own (the shipped configs' case) gets them."""
    import shutil

    from transformers import CLIPTokenizer

    from loratrainer.model.assets import SD15_CONFIG_DIR, SDXL_CONFIG_DIR
    from loratrainer.model.sdxl import shipped_tokenizer

    assert not [p.name for p in SDXL_CONFIG_DIR.glob("tokenizer*/*") if p.name in ("vocab.json", "merges.txt")]
    caption = "a photo of a cat, masterpiece, (best quality:1.2)"
    # what the removed copies (assets/sdxl/tokenizer*/vocab.json + merges.txt) encoded it to, recorded before removal
    before = [49406, 320, 1125, 539, 320, 2368, 267, 12066, 267, 263, 949, 3027, 281, 272, 269, 273, 264, 49407]
    pad = 32 - len(before)

    def encode(tokenizer):
        return tokenizer(caption, padding="max_length", max_length=32).input_ids

    assert encode(CLIPTokenizer.from_pretrained(SD15_CONFIG_DIR / "tokenizer")) == before + [49407] * pad  # the same vocabulary
    one, two = shipped_tokenizer("tokenizer"), shipped_tokenizer("tokenizer_2")
    assert encode(one) == before + [49407] * pad and one.pad_token == "<|endoftext|>"
    assert encode(two) == before + [0] * pad and two.pad_token == "!" and two.pad_token_id == 0
    assert one.model_max_length == two.model_max_length == 77
    configs = shutil.copytree(tiny["config"], tmp_path / "config")
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(configs / sub)
    c = load(tiny["file"], config_dir=configs)
    assert encode(c.tokenizer) == before + [49407] * pad and encode(c.tokenizer_2) == before + [0] * pad


def test_diffusers_folder_loads_with_its_own_tokenizers(tiny, no_network):
    c = load(tiny["folder"], dtype=torch.float16)
    assert c.family == "sdxl" and c.source.startswith("diffusers folder") and c.model_hash == ""
    assert c.unet.dtype == torch.float16 and c.text_encoder_2.dtype == torch.float16
    assert_same_weights(c, build_tiny_sdxl(), atol=1e-2)
    ids = c.tokenizer_2("a cat", padding="max_length", max_length=8).input_ids
    assert ids[-1] == 0  # SDXL's tokenizer_2 pads with "!"
    assert c.declared_prediction == "epsilon"


def test_v_prediction_models_say_so(tiny, no_network):
    folder = load(tiny["vpred_folder"])
    assert folder.declared_prediction == "v_prediction"
    single = load(tiny["vpred_file"], config_dir=tiny["config"])
    assert single.declared_prediction == "v_prediction" and single.declared_zero_terminal_snr
    trained_as_v = load(tiny["vpred_file"], config_dir=tiny["config"], settings={"v_parameterization": True})
    assert trained_as_v.noise_scheduler.config.prediction_type == "v_prediction"


def test_family_comes_from_keys_and_config_never_the_name(tiny, tmp_path):
    assert detect_family(tiny_sdxl_ldm_state_dict(build_tiny_sdxl())) == "sdxl"
    assert folder_family(tiny["folder"]) == "sdxl"
    misleading = save_tiny_single_file(tmp_path / "sdxl_base_1.0.safetensors")  # an SD1.5 file named like SDXL
    sd15 = load(misleading, config_dir=tiny_config_dir(tmp_path / "sd15-config"))
    assert sd15.family == "sd15" and type(sd15).__name__ == "SD15Components"
    pony = (tmp_path / "v1-5-pruned.safetensors")
    pony.write_bytes(tiny["file"].read_bytes())  # an SDXL file named like SD1.5
    assert load(pony, config_dir=tiny["config"]).family == "sdxl"


def test_a_model_family_setting_that_contradicts_the_model_is_one_sentence(tiny, tmp_path):
    sd15 = save_tiny_single_file(tmp_path / "sd15.safetensors")
    with pytest.raises(UserError) as err:
        load(sd15, settings={"model_family": "sdxl"})
    assert str(err.value).count(". ") <= 2 and "Model family is set to sdxl" in str(err.value)
    assert "an SD1.5 model" in str(err.value)
    with pytest.raises(UserError, match="is an SDXL model"):
        load(tiny["folder"], settings={"model_family": "sd15"})
    assert load(tiny["folder"], settings={"model_family": "sdxl"}).family == "sdxl"


def test_load_sdxl_names_what_a_file_is_instead(tiny, tmp_path):
    sd15 = save_tiny_single_file(tmp_path / "sd15.safetensors")
    with pytest.raises(NotSDXLCheckpoint, match="not an SDXL checkpoint"):
        load_sdxl(ModelSettings(pretrained_model_name_or_path=str(sd15)))
    state = load_file(str(tiny["file"]))
    no_te2 = {k: v for k, v in state.items() if not k.startswith("conditioner.embedders.1.")}
    save_file(no_te2, str(tmp_path / "no-te2.safetensors"))
    with pytest.raises(NotSDXLCheckpoint, match="without its text encoder 2"):
        load_sdxl(ModelSettings(pretrained_model_name_or_path=str(tmp_path / "no-te2.safetensors")))


def test_sdxl_vae_file_replaces_the_models_vae(tiny, tmp_path):
    state = load_file(str(tiny["file"]))
    vae_only = {k.removeprefix("first_stage_model."): v * 0 + 0.5 for k, v in state.items() if k.startswith("first_stage_model.")}
    save_file(vae_only, str(tmp_path / "fixed-vae.safetensors"))
    c = load(tiny["file"], config_dir=tiny["config"], settings={"vae": str(tmp_path / "fixed-vae.safetensors")})
    assert all(torch.all(p == 0.5) for p in c.vae.parameters())
    assert c.vae.config.scaling_factor == pytest.approx(0.13025)


# -- LoRA: names, the file diffusers loads, metadata, network_weights -------------------------------------------


def trained(lora_type="Standard", seed=1, **parts):
    net = NetworkSettings(lora_type=lora_type, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1)
    handle = inject_lora(build_tiny_sdxl(), net, **{"train_unet": True, "train_text_encoder": True, **parts})
    torch.manual_seed(seed)
    with torch.no_grad():  # a LoRA that does something (fresh ones are zero)
        for p in handle.unet_parameters() + handle.text_encoder_parameters() + handle.text_encoder_2_parameters():
            p.normal_(std=0.2)
    return handle


def test_kohya_sdxl_names_and_parts():
    handle = trained("LoCon")
    names = set(handle.modules)
    assert {n.split("_")[1] for n in names} == {"unet", "te1", "te2"}
    # sd-scripts' original-layout UNet names (tiny: layers_per_block 2, attention in the inner block)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k" in names
    assert "lora_unet_middle_block_1_proj_in" in names and "lora_unet_output_blocks_2_1_proj_out" in names
    assert "lora_unet_input_blocks_3_0_op" in names and "lora_unet_output_blocks_2_2_conv" in names
    assert "lora_unet_input_blocks_4_0_skip_connection" in names and "lora_unet_middle_block_0_emb_layers_1" in names
    assert "lora_te1_text_model_encoder_layers_1_mlp_fc2" in names
    assert "lora_te2_text_model_encoder_layers_0_self_attn_out_proj" in names
    assert not any("down_blocks" in n or "up_blocks" in n or n.startswith("lora_te_") for n in names)
    te2 = inject_lora(build_tiny_sdxl(), NetworkSettings(), train_unet=True, train_text_encoder=True,
                      train_text_encoder_2=False)
    assert te2.text_encoder_2_parameters() == [] and not any(n.startswith("lora_te2_") for n in te2.modules)
    assert all(p.requires_grad for p in te2.text_encoder_parameters())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One trained tiny SDXL LoRA per type, saved in Kohya's layout: (handle, path); shared by the tests below."""
    root, cache = tmp_path_factory.mktemp("sdxl-loras"), {}

    def get(lora_type):
        if lora_type not in cache:
            handle = trained(lora_type)
            cache[lora_type] = handle, save_lora(root / f"{lora_type}.safetensors", lora_state_dict(handle, "float"), {})
        return cache[lora_type]

    return get


def render(pipe):
    return pipe("a photo of a cat", num_inference_steps=2, height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon"])
def test_diffusers_sdxl_pipeline_loads_the_kohya_file_with_no_key_left(saved, lora_type):
    handle, path = saved(lora_type)
    pipe = build_tiny_sdxl().pipeline()
    base = render(pipe) if lora_type == "Standard" else None  # the image changes (once is enough)
    with _Collect() as log:
        pipe.load_lora_weights(str(path))  # diffusers' own Kohya SDXL (SGM names) converter
    assert log.key_problems() == []
    for info in handle.modules.values():  # every module arrived where it belongs, with our weights and scale
        ours = handle.model(info.part).get_submodule(info.path)
        theirs = getattr(pipe, info.part).get_submodule(info.path)
        (name,) = theirs.lora_A.keys()
        assert torch.allclose(theirs.lora_A[name].weight, ours.lora_A["default"].weight), info.kohya_name
        assert torch.allclose(theirs.lora_B[name].weight, ours.lora_B["default"].weight), info.kohya_name
        assert theirs.scaling[name] == pytest.approx(info.alpha / info.rank), info.kohya_name
    adapted = {(part, n) for part in ("unet", "text_encoder", "text_encoder_2")
               for n, m in getattr(pipe, part).named_modules() if hasattr(m, "lora_A")}
    assert len(adapted) == len(handle.modules)
    if base is not None:
        assert np.abs(render(pipe) - base).max() > 1e-3


def test_diffusers_format_copy_loads_in_the_sdxl_pipeline(tmp_path):
    handle = trained()
    folder = save_diffusers_lora(tmp_path / "diffusers", handle)
    pipe = build_tiny_sdxl().pipeline()
    with _Collect() as log:
        pipe.load_lora_weights(str(folder))
    assert log.key_problems() == []
    lora_modules = sum(hasattr(m, "lora_A") for part in ("unet", "text_encoder", "text_encoder_2")
                       for m in getattr(pipe, part).modules())
    assert lora_modules == len(handle.modules)


def sdxl_metadata(config, family="sdxl"):
    progress = TrainingProgress(epoch=1, step=40, num_epochs=2, max_train_steps=80, seed=1234,
                                started_at=1_700_000_000.0, finished_at=1_700_000_100.0)
    return build_metadata(config, progress, DATASET, ModelInfo(name="ponyDiffusionV6XL.safetensors", hash="67ab2fd8",
                                                               family=family))


def test_metadata_is_what_sd_scripts_writes_for_sdxl():
    config = TrainingConfig()
    config.buckets.max_resolution = "1024,1024"
    meta = sdxl_metadata(config)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "1024x1024" and meta["ss_resolution"] == "(1024, 1024)"
    assert meta["ss_zero_terminal_snr"] == "False" and meta["ss_fp8_base"] == "False"
    assert meta["ss_sd_model_name"] == "ponyDiffusionV6XL.safetensors"
    config.optimizer.text_encoder_2_lr = 2e-5
    assert sdxl_metadata(config)["ss_text_encoder_lr"] == str([config.effective_text_encoder_lr, 2e-5])
    sd15 = sdxl_metadata(TrainingConfig(), family="sd15")
    assert sd15["ss_base_model_version"] == "sd_v1" and sd15["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert "ss_zero_terminal_snr" not in sd15


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon", "LoHa", "LoKr"])
def test_network_weights_continue_an_sdxl_file(tmp_path, lora_type):
    first = trained(lora_type)
    saved = lora_state_dict(first, "float")
    save_file(saved, str(tmp_path / "start.safetensors"))
    again = trained(lora_type, seed=2)
    assert load_network_weights(again, tmp_path / "start.safetensors") == []
    loaded = lora_state_dict(again, "float")
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    if lora_type in ("LoHa", "LoKr"):  # LyCORIS layout on the same (LoCon) module set
        assert {k.split(".")[0] for k in saved} == set(trained("LoCon").modules)


def test_network_weights_of_the_other_family_or_an_untrained_part_are_refused(tmp_path, saved):
    sd15 = inject_lora(build_tiny_components(), NetworkSettings(network_dim=4, network_alpha=2),
                       train_unet=True, train_text_encoder=True)
    save_file(lora_state_dict(sd15, "float"), str(tmp_path / "sd15.safetensors"))
    with pytest.raises(NetworkWeightsMismatch, match="SD1.5 LoRA"):
        load_network_weights(trained(), tmp_path / "sd15.safetensors")
    standard, standard_file = saved("Standard")
    with pytest.raises(NetworkWeightsMismatch, match="SD1.5 LoRA"):
        load_network_weights(standard, tmp_path / "sd15.safetensors")
    with pytest.raises(NetworkWeightsMismatch, match="SDXL LoRA"):
        load_network_weights(sd15, standard_file)
    no_te2 = trained(train_text_encoder_2=False)
    with pytest.raises(NetworkWeightsMismatch, match="text_encoder_2_lr"):
        load_network_weights(no_te2, standard_file)
    with pytest.raises(NetworkWeightsMismatch, match="LoCon"):
        load_network_weights(standard, saved("LoCon")[1])


def test_tiny_widths_keep_the_two_encoders_apart():
    # diffusers tells text encoder 1 from 2 in a single file by the width of its position embedding
    assert TEXT1_HIDDEN != TEXT2_HIDDEN
    assert json.dumps(build_tiny_sdxl().unet.config["cross_attention_dim"]) == str(TEXT1_HIDDEN + TEXT2_HIDDEN)


def test_a_pickled_ckpt_is_read_once_and_loads_as_sdxl(tiny, tmp_path, monkeypatch):
    import loratrainer.model.components as components

    ckpt = save_tiny_sdxl_single_file(tmp_path / "old.ckpt")
    reads = []
    real = components.read_checkpoint
    monkeypatch.setattr(components, "read_checkpoint", lambda *a, **k: reads.append(a) or real(*a, **k))
    c = load(ckpt, config_dir=tiny["config"])
    assert c.family == "sdxl" and len(reads) == 1  # the loader got the tensors the family check read
    assert_same_weights(c, build_tiny_sdxl())


def test_an_sdxl_hub_id_offline_is_one_sentence(no_network):
    from loratrainer.model.errors import ModelNotAvailableOffline

    with pytest.raises(ModelNotAvailableOffline, match="cannot be reached"):
        load("stabilityai/stable-diffusion-xl-base-1.0", settings={"model_family": "sdxl"})
