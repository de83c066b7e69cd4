"""Loading the base model offline: diffusers folder, original single file (.safetensors/.ckpt), separate VAE,
the shipped tokenizer, and clear errors for missing, foreign and corrupt files."""

import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from loratrainer.config import ModelSettings
from loratrainer.errors import UserError
from loratrainer.model.assets import SD15_CONFIG_DIR
from loratrainer.model.checkpoint import detect_family
from loratrainer.model.errors import CorruptModelFile, ModelFileMissing, ModelNotAvailableOffline, NotSD15Checkpoint
from loratrainer.model.loading import load_sd15
from tests.tiny_sd import build_tiny_components, save_tiny_diffusers, save_tiny_single_file, tiny_ldm_state_dict

PARTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "folder": save_tiny_diffusers(root / "tiny"),
        "safetensors": save_tiny_single_file(root / "tiny.safetensors"),
        "ckpt": save_tiny_single_file(root / "tiny.ckpt"),
        "root": root,
    }


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (HF_HUB_OFFLINE is set suite-wide as well)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(path, **kw):
    return load_sd15(ModelSettings(pretrained_model_name_or_path=str(path), **kw.pop("settings", {})), **kw)


def assert_same_weights(a, b):
    for part in PARTS:
        x, y = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert x.keys() == y.keys(), part
        assert all(torch.equal(x[k], y[k].to(x[k].dtype)) for k in x), part


def test_shipped_tokenizer_matches_clip_vit_large_patch14():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(SD15_CONFIG_DIR / "tokenizer")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.bos_token == "<|startoftext|>"


def test_diffusers_folder_loads_offline(tiny, no_network):
    c = load(tiny["folder"])
    assert_same_weights(c, build_tiny_components())
    assert c.model_name == "tiny" and "diffusers folder" in c.source
    assert c.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert not any(p.requires_grad for part in PARTS for p in getattr(c, part).parameters())
    assert c.noise_scheduler.config.prediction_type == "epsilon"
    assert c.noise_scheduler.config.beta_schedule == "scaled_linear" and c.noise_scheduler.config.num_train_timesteps == 1000


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_single_file_in_original_layout_loads_offline_and_equals_the_folder(tiny, no_network, kind):
    c = load(tiny[kind], config_dir=tiny["folder"])
    assert_same_weights(c, load(tiny["folder"]))
    assert "single file" in c.source and c.model_name == f"tiny.{kind}"
    assert len(c.model_hash) == 8  # A1111's legacy hash, Kohya's ss_sd_model_hash
    assert c.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_fp16_file_loads_in_the_requested_dtype(tiny, no_network):
    half = tiny["root"] / "half.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(tiny["safetensors"]).items()}, half)
    c = load(half, config_dir=tiny["folder"])
    assert {p.dtype for part in PARTS for p in getattr(c, part).parameters()} == {torch.float32}


def test_v_parameterization_sets_the_prediction_type(tiny):
    c = load(tiny["folder"], settings={"v_parameterization": True})
    assert c.noise_scheduler.config.prediction_type == "v_prediction"


def test_separate_vae_file_replaces_the_models_vae(tiny, no_network):
    other = build_tiny_components(seed=5)
    ldm = tiny_ldm_state_dict(other)
    vae_file = tiny["root"] / "vae.safetensors"  # as users download VAEs: LDM keys without a prefix
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in ldm.items()
               if k.startswith("first_stage_model.")}, vae_file)
    c = load(tiny["folder"], settings={"vae": str(vae_file)}, config_dir=tiny["folder"])
    for k, v in other.vae.state_dict().items():
        assert torch.equal(c.vae.state_dict()[k], v), k
    assert torch.equal(c.unet.conv_in.weight, build_tiny_components().unet.conv_in.weight)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ModelFileMissing, match="does not exist"):
        load(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileMissing):
        load(tmp_path / "sub" / "model")
    assert issubclass(ModelFileMissing, UserError)


def test_hub_id_without_network_says_to_use_a_local_file(no_network):
    with pytest.raises(ModelNotAvailableOffline, match="hub"):
        load("someone/not-cached-model-xyz")


def test_folder_that_is_not_a_diffusers_model(tmp_path):
    with pytest.raises(NotSD15Checkpoint, match="model_index.json"):
        load(tmp_path)


def _fake(tmp_path, name, tensors):
    path = tmp_path / name
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, path)
    return path


UNET = "model.diffusion_model."
FAKES = {
    "sdxl": ({"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (2,),
              "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (2, 2),
              UNET + "input_blocks.0.0.weight": (2, 4, 1, 1)}, "SDXL"),
    "sd2": ({"cond_stage_model.model.token_embedding.weight": (2, 2),
             UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (2, 1024)}, "2.x"),
    "sd2-by-width": ({UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (2, 1024),
                      "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (2, 2)}, "2.x"),
    "inpainting": ({UNET + "input_blocks.0.0.weight": (2, 9, 1, 1),
                    UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (2, 768)}, "inpainting"),
    "lora": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (2, 4, 1, 1)}, "LoRA file"),
    "vae": ({"encoder.down.0.block.0.conv1.weight": (2, 2, 3, 3), "decoder.up.0.block.0.conv1.weight": (2,)}, "VAE"),
    "sd3": ({UNET + "joint_blocks.0.context_block.adaLN_modulation.1.bias": (2,)}, "SD3"),
    "unet-only-sd1": ({UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (2, 768)}, "without its"),
    "random-keys": ({"foo.bar": (2,)}, "not a Stable Diffusion checkpoint"),
}


@pytest.mark.parametrize("name", list(FAKES))
def test_foreign_checkpoints_are_recognised_and_named(tmp_path, name):
    tensors, words = FAKES[name]
    with pytest.raises(NotSD15Checkpoint, match=words):
        load(_fake(tmp_path, f"{name}.safetensors", tensors))


def test_detect_family_on_the_tiny_sd15_checkpoint():
    assert detect_family(tiny_ldm_state_dict(build_tiny_components())) == "sd1"


def test_truncated_safetensors_is_reported_as_corrupt(tiny, tmp_path):
    data = tiny["safetensors"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelFile, match="download it again"):
        load(cut)


def test_truncated_ckpt_is_reported_as_corrupt(tiny, tmp_path):
    data = tiny["ckpt"].read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelFile):
        load(cut)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_random_bytes_are_reported_as_corrupt(tmp_path, suffix):
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CorruptModelFile):
        load(junk)


class _NotATensor:
    pass


def test_pickle_with_python_objects_is_refused_with_advice(tmp_path):
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "callbacks": _NotATensor()}, path)
    with pytest.raises(CorruptModelFile, match="safetensors"):
        load(path)


def test_shipped_configs_build_sd15_exactly():
    """The shipped configs give SD1.5's parameter counts (runwayml/stable-diffusion-v1-5), built on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, te)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8  # latents are 1/8 of the image
