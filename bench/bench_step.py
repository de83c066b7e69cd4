"""ms per training step: our trainer vs a minimal reference loop, on the same tiny SD1.5, data and batch.

The reference is the per-step work of diffusers' LoRA example written plainly (diffusers + peft + accelerate):
load the batch, VAE-encode, add noise, predict, MSE, backward, optimizer step. Ours runs the real pieces:
the DataLoader from data.steps' batches, training_step (NaN guard, STOP check, clipping, schedule) and the
progress reporter (events.jsonl + TensorBoard). Both do the same work: latents and text-encoder outputs are
not cached, the text encoder is frozen, LoRA on Kohya's module set, rank 8. They run alternately, A B A B ...,
so that the machine's drift (other jobs) hits both alike; the figure is the median of per-round ratios.

    .venv/bin/python bench/bench_step.py [--rounds 30] [--steps 4] [--batch 4] [--threads 2]

On a shared machine the median of round ratios is the figure; the ratio of the fastest rounds shows the
undisturbed cost.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loratrainer.compat import hide_broken_torchvision  # noqa: E402

hide_broken_torchvision()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from peft import LoraConfig, inject_adapter_in_model  # noqa: E402
from PIL import Image  # noqa: E402

from loratrainer.config import TrainingConfig, with_values  # noqa: E402
from loratrainer.run.events import EventWriter  # noqa: E402
from loratrainer.model.lora import target_modules  # noqa: E402
from loratrainer.train.loop import current_lr, step_groups, training_step  # noqa: E402
from loratrainer.train.reporting import ProgressReporter  # noqa: E402
from loratrainer.train.setup import build_trainer  # noqa: E402
from tests.datasets import make_dataset  # noqa: E402
from tests.tiny_sd import build_tiny_components, save_tiny_diffusers  # noqa: E402


def our_stepper(root: Path, model: Path, data: Path, batch: int, accelerator: Accelerator):
    config = with_values(TrainingConfig(), {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(root / "out"),
        "max_resolution": "64,64", "min_bucket_reso": 64, "train_batch_size": batch, "epoch": 1000, "optimizer": "AdamW",
        "mixed_precision": "no", "seed": 1, "text_encoder_lr": 0, "cache_latents": False, "network_dim": 8,
        "network_alpha": 8, "lr_scheduler": "constant", "max_grad_norm": 0,
    })
    t = build_trainer(config, root, accelerator, seed=1)
    t.text_cache = None  # the reference encodes captions every step; so do we here
    from torch.utils.tensorboard import SummaryWriter

    reporter = ProgressReporter(EventWriter(root / "events.jsonl"), SummaryWriter(str(root / "tb")), t.total_steps, t.epochs)
    groups = (g for epoch in itertools.count(1) for g in _epoch(t, epoch))

    def step() -> None:
        loss, _ = training_step(t, next(groups))
        reporter.step(t.step, t.epoch, loss, current_lr(t.lr_scheduler))

    return step


def _epoch(t, epoch: int):
    t.epoch = epoch
    t.sampler.set_epoch(epoch)
    return step_groups(t.loader, 1)


def reference_stepper(data: Path, batch: int, accelerator: Accelerator):
    tiny = build_tiny_components(seed=0)
    unet, vae, te, tok, sched = tiny.unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.noise_scheduler
    for m in (unet, vae, te):
        m.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=8, target_modules=target_modules(unet, "unet", conv=False)), unet)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    unet.train()
    files = sorted(p for p in data.rglob("*.png"))
    captions = [f.with_suffix(".txt").read_text() for f in files]

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            image = Image.open(files[i]).convert("RGB").resize((64, 64))
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
            return pixels, tok(captions[i], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]

    loader = torch.utils.data.DataLoader(Images(), batch_size=batch, shuffle=True, drop_last=True)
    batches = (b for _ in itertools.count() for b in loader)

    def step() -> None:
        pixels, ids = next(batches)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            hidden = te(ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],))
        pred = unet(sched.add_noise(latents, noise, timesteps), timesteps, hidden).sample
        loss = F.mse_loss(pred.float(), noise.float())
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # the example logs the loss every step

    return step


def timed(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = save_tiny_diffusers(root / "tiny")
        data = make_dataset(root / "image", {"1_thing": 8})
        accelerator = Accelerator(cpu=True)
        ours = our_stepper(root, model, data, args.batch, accelerator)
        ref = reference_stepper(data, args.batch, accelerator)
        timed(ours, 3), timed(ref, 3)  # warm-up
        rows = []
        for r in range(args.rounds):
            a, b = timed(ours, args.steps), timed(ref, args.steps)
            rows.append((a, b))
            print(f"round {r + 1}: ours {a:7.1f} ms/step  reference {b:7.1f} ms/step  ratio {a / b:.3f}", flush=True)
        ratio = statistics.median(a / b for a, b in rows)
        best = min(a for a, _ in rows) / min(b for _, b in rows)  # the least disturbed rounds of each
        print(f"median ours {statistics.median(a for a, _ in rows):.1f} ms/step, reference "
              f"{statistics.median(b for _, b in rows):.1f} ms/step; ratio: median of rounds {ratio:.3f}, "
              f"of the fastest rounds {best:.3f} (target <= 1.10) "
              f"[batch {args.batch}, {args.threads} threads, {args.rounds} rounds x {args.steps} steps each]")


if __name__ == "__main__":
    main()
