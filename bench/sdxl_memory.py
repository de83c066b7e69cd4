"""SDXL memory at full size, for docs/performance.md's per-preset table (issue 21).

Two parts:

- `count`: every number the table computes from shapes, exactly: parameters of SDXL's UNet, CLIP ViT-L (te1),
  OpenCLIP ViT-bigG (te2, CLIPTextModelWithProjection) and VAE built on the meta device from the configs of
  stabilityai/stable-diffusion-xl-base-1.0 (written below: no network here), and the LoRA parameters of a
  Standard LoRA at rank r on sd-scripts' SDXL module set (networks/lora.py: UNet Transformer2DModel Linear
  layers, CLIPAttention/CLIPMLP of both text encoders).
- `measure`: one training step (forward + backward) of the full-size UNet with random bf16 weights and a peft
  LoRA on that module set, on CPU, at a given latent size, with or without gradient checkpointing; prints the
  process's peak resident memory (ru_maxrss) after the weights were built and after the step. CPU memory is not
  GPU memory (no CUDA context, another allocator, the math attention kernel where the GPU uses a flash kernel),
  so the doc quotes it as a measurement of the activations' size on CPU, next to the computed numbers.

    PYTHONPATH=. python bench/sdxl_memory.py count
    PYTHONPATH=. nice -n 15 python bench/sdxl_memory.py measure --latent 64 --checkpointing   # 512 px
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

UNET_CONFIG = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": False,
    "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
TE1_CONFIG = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
              "hidden_act": "quick_gelu", "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768}
TE2_CONFIG = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
              "hidden_act": "gelu", "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 1280}
VAE_CONFIG = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32,
              "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 1024}
# sd-scripts networks/lora.py: LoRANetwork.UNET_TARGET_REPLACE_MODULE / TEXT_ENCODER_TARGET_REPLACE_MODULE
UNET_TARGETS = ("Transformer2DModel",)
TE_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


def build(device: str = "meta", dtype=torch.float32):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNET_CONFIG).to(dtype)
        if device != "meta":
            return unet, None, None, None
        te1 = CLIPTextModel(CLIPTextConfig(**TE1_CONFIG))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2_CONFIG))
        vae = AutoencoderKL.from_config(VAE_CONFIG)
    return unet, te1, te2, vae


def lora_linears(model, targets) -> list[tuple[str, torch.nn.Module]]:
    out = []
    for name, module in model.named_modules():
        if type(module).__name__ in targets:
            for child_name, child in module.named_modules():
                if isinstance(child, torch.nn.Linear) or (isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)):
                    out.append((f"{name}.{child_name}", child))
    return out


def lora_params(modules, rank: int) -> int:
    total = 0
    for _, m in modules:
        fan_in = m.in_features if isinstance(m, torch.nn.Linear) else m.in_channels
        fan_out = m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels
        total += rank * (fan_in + fan_out) + 1  # down, up, alpha
    return total


def count() -> dict:
    unet, te1, te2, vae = build()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    unet_mods, te1_mods, te2_mods = lora_linears(unet, UNET_TARGETS), lora_linears(te1, TE_TARGETS), lora_linears(te2, TE_TARGETS)
    return {
        "params": {"unet": n(unet), "te1": n(te1), "te2": n(te2), "vae": n(vae)},
        "lora_modules": {"unet": len(unet_mods), "te1": len(te1_mods), "te2": len(te2_mods)},
        "lora_params": {r: {"unet": lora_params(unet_mods, r), "te": lora_params(te1_mods, r) + lora_params(te2_mods, r)} for r in (16, 32, 64)},
    }


class _FlashSDPA(torch.autograd.Function):
    """What a GPU's flash / memory-efficient attention keeps for backward: q, k, v, the output and the row
    log-sum-exp (B x H x L floats), not the L x L attention matrix the math kernel would save."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the activations are only counted
        q, k, v, *_ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def activations(pixels: int, rank: int, dtype=torch.bfloat16) -> dict:
    """The tensors autograd keeps for backward in one SDXL UNet training step at `pixels` (batch 1), counted on the
    meta device (no memory, no compute): without gradient checkpointing all of them; with it (diffusers checkpoints
    every ResnetBlock2D and Transformer2DModel) the checkpoints' inputs plus the largest single unit recomputed
    in backward. Attention is counted as the GPU's flash/memory-efficient kernel keeps it (_FlashSDPA)."""
    import torch.nn.functional as F
    from peft import LoraConfig, inject_adapter_in_model

    unet, *_ = build("meta", dtype)
    unet.requires_grad_(False)
    names = [name for name, _ in lora_linears(unet, UNET_TARGETS)]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=names), unet)
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    units = [m for m in unet.modules() if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")]
    stack: list[int] = []
    per_unit: dict[int, int] = {}
    seen: set = set()
    total = [0]

    params = {id(p) for p in unet.parameters()}

    def pack(t):
        base = t
        while base._base is not None:  # a view (a weight's transpose in linear) shares the weight's memory
            base = base._base
        if id(base) in params or isinstance(base, torch.nn.Parameter):
            return t  # a weight kept for backward is the model's own memory, counted with the weights
        key = (t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t), t.shape, t.dtype)
        if key not in seen:
            seen.add(key)
            size = t.numel() * t.element_size()
            total[0] += size
            if stack:
                per_unit[stack[-1]] = per_unit.get(stack[-1], 0) + size
        return t

    unit_inputs_bytes: dict[int, int] = {}

    def enter(mod, args, kwargs):
        stack.append(id(mod))
        x = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        unit_inputs_bytes[id(mod)] = x.numel() * x.element_size()  # what a checkpoint keeps of this unit

    for m in units:
        m.register_forward_pre_hook(enter, with_kwargs=True)
        m.register_forward_hook(lambda mod, args, out: (stack.pop(), None)[1])  # a hook that returns a value replaces the output
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *a, **kw: _FlashSDPA.apply(q, k, v)
    try:
        latent = pixels // 8
        with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sample = torch.randn(1, 4, latent, latent, dtype=dtype)
            context = torch.randn(1, 77, 2048, dtype=dtype)
            added = {"text_embeds": torch.randn(1, 1280, dtype=dtype), "time_ids": torch.randn(1, 6, dtype=dtype)}
            unet(sample, torch.tensor([500]), context, added_cond_kwargs=added)
    finally:
        F.scaled_dot_product_attention = original
    inside = sum(per_unit.values())
    # checkpointed: each unit keeps only its input; outside the units everything is kept as without checkpointing
    unit_inputs = sum(unit_inputs_bytes.values())
    return {"pixels": pixels, "rank": rank, "dtype": str(dtype).removeprefix("torch."),
            "saved_no_checkpointing_gb": round(total[0] / 1e9, 2),
            "saved_outside_units_gb": round((total[0] - inside) / 1e9, 2),
            "checkpoint_inputs_gb": round(unit_inputs / 1e9, 2),
            "largest_unit_gb": round(max(per_unit.values()) / 1e9, 2),
            "saved_with_checkpointing_gb": round((total[0] - inside + unit_inputs + max(per_unit.values())) / 1e9, 2)}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(latent: int, checkpointing: bool, rank: int) -> dict:
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: an fp32 build would set the peak (10 GB)
    try:
        unet, *_ = build("cpu", torch.bfloat16)
    finally:
        torch.set_default_dtype(torch.float32)
    unet.requires_grad_(False)
    names = [name for name, _ in lora_linears(unet, UNET_TARGETS)]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=names), unet)
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # LoRA weights in fp32 (mixed precision), the base in bf16
            p.requires_grad_(True)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    built = peak_mb()
    t1 = time.time()
    sample = torch.randn(1, 4, latent, latent, dtype=torch.bfloat16)
    context = torch.randn(1, 77, 2048, dtype=torch.bfloat16)
    added = {"text_embeds": torch.randn(1, 1280, dtype=torch.bfloat16),
             "time_ids": torch.tensor([[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]], dtype=torch.bfloat16)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(sample, torch.tensor([500]), context, added_cond_kwargs=added).sample
    loss = torch.nn.functional.mse_loss(out.float(), torch.randn_like(out, dtype=torch.float32))
    loss.backward()
    trained = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return {"latent": latent, "pixels": latent * 8, "checkpointing": checkpointing, "rank": rank, "lora_params": trained,
            "rss_after_weights_mb": round(built), "rss_peak_after_step_mb": round(peak_mb()),
            "step_activations_mb": round(peak_mb() - built), "build_s": round(t1 - t0, 1), "step_s": round(time.time() - t1, 1),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("count", "measure", "activations"))
    parser.add_argument("--pixels", type=int, default=1024)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    if args.what == "activations":
        result = activations(args.pixels, args.rank)
    else:
        result = count() if args.what == "count" else measure(args.latent, args.checkpointing, args.rank)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
