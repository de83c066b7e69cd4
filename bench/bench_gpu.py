"""GPU benchmark: our trainer on a model with the exact SD1.5 shapes and random weights (nothing to download).

docs/performance.md's second benchmark: 512x512, bf16, LoRA rank 16 on Kohya's UNet module set, the text encoder
frozen, latents and text-encoder outputs cached, batch 1 and 8 (any list with --batches). It builds the model from
the SD1.5 configs shipped in loratrainer/assets, saves it once as a diffusers folder (bf16, about 2 GB) and runs
the real pieces: build_trainer (dataset check, model loading, LoRA, latent cache) and training_step.
Reported per batch size: images/s, ms/step, peak VRAM, and images/s x 1.725 TFLOP as a share of --peak-tflops.

    .venv/bin/python bench/bench_gpu.py [--batches 1,8] [--steps 30] [--gradient-checkpointing] [--no-cache]
    .venv/bin/python bench/bench_gpu.py --tiny      # the same code on the tiny test model, on the CPU (a smoke run)

Without a CUDA GPU (and without --tiny) it measures nothing and says so (exit code 2).
Compare only numbers taken on the same card in the same run.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loratrainer.compat import hide_broken_torchvision  # noqa: E402

hide_broken_torchvision()

import torch  # noqa: E402

from loratrainer.config import TrainingConfig, with_values  # noqa: E402
from loratrainer.model.assets import SD15_CONFIG_DIR  # noqa: E402
from loratrainer.train.entry import make_accelerator  # noqa: E402
from loratrainer.train.loop import step_groups, training_step  # noqa: E402
from loratrainer.train.setup import build_trainer  # noqa: E402
from tests.datasets import make_dataset  # noqa: E402

TFLOP_PER_IMAGE = 1.725  # LoRA step on the frozen SD1.5 UNet at 512x512 (docs/performance.md); + 0.8 with checkpointing


def random_sd15(folder: Path, dtype: torch.dtype) -> Path:
    """A diffusers folder with SD1.5's exact shapes and random weights, from the shipped configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    shutil.copytree(SD15_CONFIG_DIR, folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 860 M parameters is much faster there
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", te)):
        model.to(dtype).save_pretrained(folder / name, safe_serialization=True)
    return folder


def bench_config(model: Path, data: Path, out: Path, batch: int, args, size: int) -> TrainingConfig:
    return with_values(TrainingConfig(), {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "max_resolution": f"{size},{size}", "min_bucket_reso": min(256, size), "train_batch_size": batch, "epoch": 1000,
        "optimizer": "AdamW", "mixed_precision": args.precision, "seed": 1, "text_encoder_lr": 0, "unet_lr": 1e-4,
        "network_dim": args.rank, "network_alpha": args.rank, "lr_scheduler": "constant",
        "cache_latents": not args.no_cache, "gradient_checkpointing": args.gradient_checkpointing,
        "num_cpu_threads_per_process": args.threads,
    })


def measure(config: TrainingConfig, root: Path, steps: int, warmup: int) -> tuple[float, float | None]:
    """(seconds per step, peak VRAM in GiB or None on the CPU) over `steps` steps after `warmup`."""
    t = build_trainer(config, root, make_accelerator(config), seed=1)
    groups = (g for epoch in itertools.count(1) for g in _epoch(t, epoch))
    cuda = t.accelerator.device.type == "cuda"
    for _ in range(warmup):
        training_step(t, next(groups))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        training_step(t, next(groups))  # its loss.item() per step syncs with the GPU, as a real run does
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del t, groups
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return seconds, peak


def _epoch(t, epoch: int):
    t.epoch = epoch
    t.sampler.set_epoch(epoch)
    return step_groups(t.loader, t.config.training.gradient_accumulation_steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precision", default="bf16", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="encode latents with the VAE every step")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="the tiny test model on the CPU: checks this script, measures nothing useful")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False), so nothing was measured. "
              "Run it on a machine with an NVIDIA GPU, or with --tiny for a CPU smoke run of the same code.")
        return 2
    if args.tiny:
        args.precision = "no"
    batches = [int(b) for b in args.batches.split(",")]
    size = 64 if args.tiny else 512
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.tiny:
            from tests.tiny_sd import save_tiny_diffusers

            model = save_tiny_diffusers(root / "tiny")
        else:
            model = random_sd15(root / "sd15-random", torch.bfloat16)
        data = make_dataset(root / "image", {"1_thing": [(size, size)] * max(8, 2 * max(batches))})
        device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "CPU"
        print(f"{device}: {'tiny model' if args.tiny else 'SD1.5 shapes, random weights'}, {size}x{size}, {args.precision}, "
              f"rank {args.rank}, latents {'encoded every step' if args.no_cache else 'cached'}, "
              f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}")
        flops = TFLOP_PER_IMAGE + (0.803 if args.gradient_checkpointing else 0.0)
        for batch in batches:
            seconds, peak = measure(bench_config(model, data, root / "out", batch, args, size), root, args.steps, args.warmup)
            images = batch / seconds
            share = "" if args.tiny else f", {images * flops / args.peak_tflops:.1%} of {args.peak_tflops:g} TFLOP/s"
            vram = f"peak VRAM {peak:.2f} GiB" if peak is not None else "peak VRAM n/a (CPU)"
            print(f"batch {batch:3d}: {images:8.2f} images/s, {seconds * 1000:8.1f} ms/step, {vram}{share}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
