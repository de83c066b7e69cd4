"""A full-size SD1.5 single-file checkpoint loads with the shipped configs, as every user's download does.

The test writes a checkpoint with SD1.5's exact architecture (random weights, the original single-file key
layout of runwayml's v1-5-pruned-emaonly, fp16, 2.1 GB) and loads it through `load_sd15(config.model, dtype=...)`, the
trainer's own path, with no config folder passed: only loratrainer/assets/sd15 can make it fit. The file is
streamed tensor by tensor (shapes from the shipped configs on the meta device), so writing it needs little
memory; loading it in fp16 holds the file and the models once each (about 4.5 GB).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from loratrainer.config import TrainingConfig, with_values
from loratrainer.model.assets import SD15_CONFIG_DIR
from loratrainer.model.loading import load_sd15
from tests.tiny_sd import unet_key_to_ldm, vae_key_to_ldm

pytestmark = pytest.mark.slow
SD15_PARAMETERS = [859_520_964, 83_653_863, 123_060_480]  # runwayml/stable-diffusion-v1-5: UNet, VAE, text encoder


def sd15_ldm_shapes() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Original-layout key -> (shape, dtype) of SD1.5, derived from the shipped diffusers configs."""
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    layers = unet.config.layers_per_block
    up_has_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    for key, value in unet.state_dict().items():
        out["model.diffusion_model." + unet_key_to_ldm(key, layers, up_has_attn)] = (tuple(value.shape), torch.float16)
    for key, value in vae.state_dict().items():
        ldm = vae_key_to_ldm(key, len(vae.config.block_out_channels))
        shape = tuple(value.shape) + ((1, 1) if ".mid.attn_1." in ldm and value.ndim == 2 else ())  # LDM: 1x1 convs
        out["first_stage_model." + ldm] = (shape, torch.float16)
    for key, value in te.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = (tuple(value.shape), torch.float16)
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ((1, 77), torch.int64)
    return out


_POOL = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)).mul_(0.02).half()


def tensor_for(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random-looking fp16 weights, different per key and cheap to make again for checking."""
    if dtype == torch.int64:
        return torch.arange(77)[None]
    n = 1
    for s in shape:
        n *= s
    start = zlib.crc32(key.encode()) % (1 << 20)
    reps = -(-(start + n) // (1 << 20))
    return _POOL.repeat(reps)[start : start + n].reshape(shape).clone()


def write_streamed_safetensors(path: Path, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """The safetensors format (8-byte header length, JSON header, raw little-endian data), one tensor at a time."""
    names = {torch.float16: "F16", torch.int64: "I64"}
    header, offset = {}, 0
    for key in sorted(shapes):
        shape, dtype = shapes[key]
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for key in sorted(shapes):
            fh.write(tensor_for(key, *shapes[key]).numpy().tobytes())


@pytest.fixture(scope="module")
def full_size_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15") / "sd15-random-fp16.safetensors"
    shapes = sd15_ldm_shapes()
    write_streamed_safetensors(path, shapes)
    yield path, shapes
    path.unlink()  # 2.1 GB: not left in pytest's kept temp folders


def test_the_streamed_file_has_sd15s_original_layout(full_size_checkpoint):
    from safetensors import safe_open

    path, shapes = full_size_checkpoint
    assert 2.0e9 < path.stat().st_size < 2.3e9  # SD1.5's pruned fp16 checkpoint is 2.13 GB
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        # keys every SD1.5 loader (A1111, ComfyUI, diffusers) looks for
        assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
        assert f.get_slice("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight").get_shape() == [320, 768]
        assert "first_stage_model.decoder.up.3.block.0.conv1.weight" in keys
        assert "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in keys
        assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys  # the first up block's upsampler
    assert len(keys) == len(shapes)


def test_full_size_single_file_loads_with_the_shipped_configs(full_size_checkpoint):
    path, shapes = full_size_checkpoint
    config = with_values(TrainingConfig(), {"pretrained_model_name_or_path": str(path)})
    c = load_sd15(config.model, dtype=torch.float16)  # the trainer's call: no config folder, no hook
    models = (c.unet, c.vae, c.text_encoder)
    assert [sum(p.numel() for p in m.parameters()) for m in models] == SD15_PARAMETERS
    assert {p.dtype for m in models for p in m.parameters()} == {torch.float16}
    assert c.unet.config.cross_attention_dim == 768 and "single file" in c.source and len(c.model_hash) == 8
    # the weights are the file's, each in the place diffusers' converter puts it
    pairs = [
        (c.unet.conv_in.weight, "model.diffusion_model.input_blocks.0.0.weight"),
        (c.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight,
         "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
        (c.unet.up_blocks[3].attentions[2].proj_out.weight, "model.diffusion_model.output_blocks.11.1.proj_out.weight"),
        (c.unet.mid_block.resnets[1].conv2.weight, "model.diffusion_model.middle_block.2.out_layers.3.weight"),
        (c.vae.decoder.up_blocks[0].resnets[0].conv1.weight, "first_stage_model.decoder.up.3.block.0.conv1.weight"),
        (c.vae.encoder.mid_block.attentions[0].to_q.weight.reshape(512, 512, 1, 1), "first_stage_model.encoder.mid.attn_1.q.weight"),
        (c.text_encoder.get_input_embeddings().weight, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"),
    ]
    for got, key in pairs:
        assert torch.equal(got.detach(), tensor_for(key, *shapes[key])), key
    assert c.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
