"""Seconds per step at full SD1.5 size: our trainer's loop against a minimal diffusers + peft loop (issue 25).

Any change to the training loop (train/loop.py and what it calls per step: noise, loss, dataset, reporting) is
checked against this (docs/performance.md, "Per-step comparison with a minimal loop").

Both sides train the same LoRA on the same full-size SD1.5 UNet (random weights from the shipped configs,
loratrainer/assets/sd15; built once into bench/.work/sd15-random, no download), in one process, with the same
threads, on the same cached latents and text-encoder outputs:

- ours: the product's code end to end: `setup.build_trainer` from a run config (cached latents, static captions
  so the text-encoder outputs are cached, UNet only), the entry point's accelerator and threads
  (`entry.make_accelerator`), its RunContext with events.jsonl and TensorBoard, the Saver, the ProgressReporter;
  each round is one epoch through `loop.train_epoch` (data loader, per-image noise generators, the STOP check,
  the NaN guard, clipping, the weight check, save/sample/validation checks, reporting).
- minimal: the per-step body of diffusers' examples/text_to_image/train_text_to_image_lora.py with the latents
  and text-encoder outputs already computed: randn_like noise, randint timesteps, add_noise, UNet, MSE, the
  gathered loss's .item(), accelerator.backward, clip_grad_norm_ (1.0, as ours), AdamW step, constant schedule,
  zero_grad. peft's LoraConfig(r, alpha) on the same module list (Kohya's, model.lora.target_modules); its
  frozen base weights are ours (the same tensors, so the process holds one UNet, and both compute the same thing).

The two alternate A B A B (`--rounds` pairs after a warm-up of each), so a machine that slows down slows both;
the figure is the median of the per-round ratios, with every step's time and the load average before each round.
`--parts` also times each piece of per-step work our loop has and the minimal loop lacks, alone, on the same
full-size trainer; `--profile N` writes a cProfile of N of our steps.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_step_vs_minimal.py [--rounds 2] [--steps 4] [--threads 2] \
        [--parts] [--profile 3] [--json bench/.work/step_vs_minimal.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loratrainer.compat import hide_broken_torchvision  # noqa: E402

hide_broken_torchvision()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from loratrainer.config import TrainingConfig, with_values  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"


def build_dataset(folder: Path, count: int, size: int) -> Path:
    """`1_bench/` with `count` textured images and one caption each: an epoch is `count` steps at batch 1."""
    import numpy as np
    from PIL import Image

    concept = folder / "1_bench"
    if concept.exists() and len(list(concept.glob("*.png"))) == count:
        return folder
    concept.mkdir(parents=True, exist_ok=True)
    for old in concept.iterdir():
        old.unlink()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(concept / f"img{i:03d}.png")
        (concept / f"img{i:03d}.txt").write_text("a photo of bench")
    return folder


def run_config(model: Path, data: Path, out: Path, args) -> TrainingConfig:
    return with_values(TrainingConfig(), {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "output_name": "bench", "max_resolution": f"{args.resolution},{args.resolution}",
        "min_bucket_reso": min(256, args.resolution), "train_batch_size": args.batch, "epoch": 1000,
        "optimizer": "AdamW", "mixed_precision": "no", "seed": 1, "text_encoder_lr": 0, "unet_lr": 1e-4,
        "network_dim": args.rank, "network_alpha": args.rank, "lr_scheduler": "constant", "max_grad_norm": 1.0,
        "cache_latents": True, "num_cpu_threads_per_process": args.threads,
    })


class TimedReporter:
    """The run's real ProgressReporter; records when each step was reported (the loop's step boundary)."""

    def __init__(self, reporter):
        self.reporter, self.times = reporter, []

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self.reporter.step(step, epoch, loss, lr)
        self.times.append(time.perf_counter())

    def epoch_end(self, epoch: int, step: int) -> None:
        self.reporter.epoch_end(epoch, step)


class Ours:
    def __init__(self, root: Path, config: TrainingConfig):
        from accelerate.utils import set_seed

        from loratrainer.run.events import EventWriter
        from loratrainer.train.entry import make_accelerator, open_tensorboard
        from loratrainer.train.reporting import ProgressReporter
        from loratrainer.train.run_context import RunContext
        from loratrainer.train.saving import Saver
        from loratrainer.train.setup import build_trainer

        run_dir = root / "run"
        accelerator = make_accelerator(config)  # sets torch's threads from num_cpu_threads_per_process, as a run does
        set_seed(1, device_specific=True)
        run = RunContext(run_dir, events=EventWriter(run_dir / "events.jsonl"))
        self.t = build_trainer(config, run_dir, accelerator, 1, run=run)
        self.t.saver = Saver(self.t)
        run.tensorboard = open_tensorboard(run_dir)
        s = self.t.report.steps
        reporter = ProgressReporter(run.events, run.tensorboard, s.total_steps, s.epochs)
        run.reporter = reporter
        self.reporter = TimedReporter(reporter)
        self.steps_per_epoch = s.steps_per_epoch

    def round(self) -> list[float]:
        """One epoch through the product's loop; the seconds of each step."""
        from loratrainer.train.loop import train_epoch

        self.reporter.times = [time.perf_counter()]
        assert train_epoch(self.t, self.t.epoch + 1, self.reporter)
        times = self.reporter.times
        return [b - a for a, b in zip(times, times[1:])]


class Minimal:
    """diffusers' train_text_to_image_lora.py step, on cached latents and text-encoder outputs."""

    def __init__(self, t, rank: int):
        from diffusers import UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from peft import LoraConfig, inject_adapter_in_model

        from loratrainer.model.assets import SD15_CONFIG_DIR
        from loratrainer.model.lora import target_modules

        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        # our UNet's frozen weights, the same tensors (peft's wrapper keeps them under base_layer)
        base = {k.replace(".base_layer.", "."): v for k, v in t.components.unet.state_dict().items() if "lora_" not in k}
        unet.load_state_dict(base, assign=True, strict=True)
        unet.requires_grad_(False)
        modules = target_modules(unet, "unet", conv=False)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=modules), unet)
        params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        self.accelerator = t.accelerator
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        lr_scheduler = get_scheduler("constant", optimizer=optimizer)
        self.unet, self.optimizer, self.lr_scheduler = self.accelerator.prepare(unet, optimizer, lr_scheduler)
        self.unet.train()
        self.params, self.modules = params, modules
        self.scheduler = t.components.noise_scheduler
        self.latents = [entry[0] * t.components.vae.config.scaling_factor for _, entry in sorted(t.loader.dataset.latents.items())]
        with torch.no_grad():
            ids = t.components.tokenizer("a photo of bench", padding="max_length", max_length=77, truncation=True,
                                         return_tensors="pt").input_ids
            self.hidden = t.components.text_encoder(ids)[0]
        self.batch = t.config.training.train_batch_size
        self.next = 0

    def step(self) -> None:
        i = self.next
        self.next = (i + self.batch) % len(self.latents)
        latents = torch.stack([self.latents[(i + k) % len(self.latents)] for k in range(self.batch)])
        hidden = self.hidden.expand(self.batch, -1, -1)
        with self.accelerator.accumulate(self.unet):
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
            noisy = self.scheduler.add_noise(latents, noise, timesteps)
            pred = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            self.accelerator.gather(loss.repeat(self.batch)).mean().item()
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()

    def round(self, steps: int) -> list[float]:
        times = [time.perf_counter()]
        for _ in range(steps):
            self.step()
            times.append(time.perf_counter())
        return [b - a for a, b in zip(times, times[1:])]


@contextmanager
def weight_check_as_before(on: bool):
    """Our loop with train/loop.py's weight check as it was until issue 25: one inf-norm over all threads."""
    from loratrainer.train import loop

    if not on:
        yield
        return
    current = loop.check_weights

    def before(t, lr: float) -> None:
        with torch.no_grad():
            largest = torch.nn.utils.get_total_norm(t.params, norm_type=math.inf)
        if not math.isfinite(float(largest)):
            raise loop.NonFiniteWeights(t.step, t.epoch, lr, fp16=t.params[0].dtype == torch.float16)

    loop.check_weights = before
    try:
        yield
    finally:
        loop.check_weights = current


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parts(t, repeat: int) -> dict[str, float]:
    """Milliseconds each piece of our per-step work takes alone (median of `repeat` timings) on the full-size trainer,
    beside what the minimal loop does instead."""
    from loratrainer.run.files import stop_requested
    from loratrainer.train import loop
    from loratrainer.train.dataset import noise_seed
    from loratrainer.train.faults import fail_step, inject_fault
    from loratrainer.train.loss import diffusion_loss, sample_weights, training_target
    from loratrainer.train.noise import item_generators, noisy_latents, sample_noise, sample_timesteps
    from loratrainer.train.sampling import maybe_sample
    from loratrainer.train.validation import maybe_validate

    batch = next(iter(loop.step_groups(t.loader, 1)))[0]
    latents = loop.batch_latents(t, batch)
    sched = t.components.noise_scheduler
    seeds = batch["noise_seeds"]
    lr = loop.current_lr(t.lr_scheduler)
    loader_iter = iter(t.loader)

    def next_batch():
        nonlocal loader_iter
        try:
            return next(loader_iter)
        except StopIteration:
            loader_iter = iter(t.loader)
            return next(loader_iter)

    def ours_noise():
        g = item_generators(seeds, latents.device)
        noise = sample_noise(latents, t.noise, g)
        ts = sample_timesteps(latents.shape[0], sched.config.num_train_timesteps, latents.device, g)
        return noisy_latents(sched, latents, noise, ts, t.noise, g)

    def minimal_noise():
        noise = torch.randn_like(latents)
        ts = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],)).long()
        return sched.add_noise(latents, noise, ts)

    pred = torch.randn_like(latents)
    ts = torch.randint(0, 1000, (latents.shape[0],))

    def ours_loss():
        target = training_target(sched, latents, pred, ts)
        return diffusion_loss(pred, target, sample_weights(sched, ts, batch["is_reg"], t.loss), t.loss, None, None)

    def weight_check_before():  # train/loop.py's check until issue 25: one inf-norm over all threads
        with torch.no_grad():
            return math.isfinite(float(torch.nn.utils.get_total_norm(t.params, norm_type=math.inf)))

    pieces = {
        "weight check (check_weights: min and max of each LoRA weight, one thread, one read)": lambda: loop.check_weights(t, lr),
        "weight check as it was (get_total_norm(inf) on all threads, float())": weight_check_before,
        "the 2 x 1 collective tensor and STOP check (agree_across_processes)": lambda: loop.agree_across_processes(t, torch.tensor(0.1)),
        "STOP file stat alone": lambda: stop_requested(t.run_dir),
        "fault hooks (fail_step + inject_fault: the environment read)": lambda: (fail_step(1), inject_fault("nan", 1, torch.tensor(0.1))),
        "per-item generator (item_generators, 1 image)": lambda: item_generators(seeds, latents.device),
        "noise seed hash (noise_seed)": lambda: noise_seed(1, 1, 0, 0),
        "ours: generators + noise + timesteps + add_noise": ours_noise,
        "minimal: randn_like + randint + add_noise": minimal_noise,
        "ours: target + weights + diffusion_loss": ours_loss,
        "minimal: F.mse_loss": lambda: F.mse_loss(pred, latents),
        "ours: next batch (DataLoader: dataset item + collate)": next_batch,
        "ours: batch latents + text conditioning (cache lookups)": lambda: (loop.batch_latents(t, batch), t.family.condition(t, batch)),
        "reporter.step (events throttled, TensorBoard scalars)": lambda: t.run.reporter.step(t.step, max(t.epoch, 1), 0.1, lr),
        "save/validation/sample checks when none is due": lambda: (maybe_validate(t, loop.compute_loss), t.saver.maybe_save(), maybe_sample(t)),
    }
    out = {}
    for name, fn in pieces.items():
        n = 10 if name.startswith("weight check") else 200
        fn()
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples.append((time.perf_counter() - start) / n * 1000)
        out[name] = round(statistics.median(samples), 4)
        print(f"  {out[name]:9.3f} ms  {name}", flush=True)
    return out


def profile(ours: Ours, path: Path) -> list[str]:
    """cProfile of one epoch of ours: the functions the loop calls per step, by cumulative time."""
    prof = cProfile.Profile()
    prof.enable()
    ours.round()
    prof.disable()
    prof.dump_stats(str(path))
    stats = pstats.Stats(prof)
    wanted = ("loop.py", "noise.py", "loss.py", "dataset.py", "reporting.py", "events.py", "saving.py", "sampling.py",
              "validation.py", "faults.py", "files.py", "family.py", "text.py", "optimizer.py", "clip_grad.py", "adamw.py")
    rows = []
    for (file, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        if any(file.endswith(w) for w in wanted) or func in ("backward", "_call_impl"):
            rows.append((ct, f"{ct:9.3f} s cumulative  {nc:6d} calls  {Path(file).parent.name}/{Path(file).name}:{func}"))
    return [r for _, r in sorted(rows, reverse=True)[:40]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="steps per side per round (ours: one epoch of this many images)")
    p.add_argument("--warmup", type=int, default=2, help="steps of each side before the first round, not counted")
    p.add_argument("--rounds", type=int, default=2, help="A B pairs (ours, minimal)")
    p.add_argument("--also-before", action="store_true",
                   help="a third side: ours with the weight check as it was before issue 25 (get_total_norm(inf), all threads)")
    p.add_argument("--parts", action="store_true", help="also time each piece of our per-step work alone")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also profile one epoch of ours (cProfile; N > 0 turns it on)")
    p.add_argument("--work", type=Path, default=WORK, help="where the random full-size model and the images are kept")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    from bench.bench_vs_sd_scripts import build_model

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(work / "sd15-random")
    data = build_dataset(work / f"images-{args.resolution}-{args.steps}", args.steps * args.batch, args.resolution)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        ours = Ours(root, run_config(model, data, root / "out", args))
        minimal = Minimal(ours.t, args.rank)
        ours_modules = sorted(n for n, m in ours.t.components.unet.named_modules() if hasattr(m, "lora_A"))
        assert ours_modules == sorted(minimal.modules), "the two loops must adapt the same modules"
        assert ours.steps_per_epoch == args.steps, (ours.steps_per_epoch, args.steps)
        print(f"set up in {time.perf_counter() - started:.0f} s: {len(ours_modules)} LoRA modules, rank {args.rank}, "
              f"{sum(p.numel() for p in ours.t.params) / 1e6:.1f} M trained parameters on each side, "
              f"{torch.get_num_threads()} threads, load {load()}", flush=True)
        assert sum(p.numel() for p in ours.t.params) == sum(p.numel() for p in minimal.params)

        ours.round()  # warm-up: one epoch of ours, `warmup` steps of the minimal loop
        minimal.round(args.warmup)
        sides = ["ours", "minimal"] + (["ours_before"] if args.also_before else [])
        rows = []
        for r in range(args.rounds):
            row = {"round": r + 1}
            for side in sides:
                row[f"load_before_{side}"] = load()
                cpu = time.process_time()
                if side == "minimal":
                    steps = minimal.round(args.steps)
                else:
                    with weight_check_as_before(side == "ours_before"):
                        steps = ours.round()
                row[f"{side}_cpu_s_per_step"] = round((time.process_time() - cpu) / len(steps), 3)
                row[f"{side}_steps_s"] = [round(s, 3) for s in steps]
                row[f"{side}_s_per_step"] = round(sum(steps) / len(steps), 3)
            for side in sides[::2]:
                row[f"ratio_{side}"] = round(row[f"{side}_s_per_step"] / row["minimal_s_per_step"], 3)
                row[f"cpu_ratio_{side}"] = round(row[f"{side}_cpu_s_per_step"] / row["minimal_cpu_s_per_step"], 3)
            rows.append(row)
            print(f"round {r + 1}: " + ", ".join(f"{side} {row[f'{side}_s_per_step']:.3f} s/step {row[f'{side}_steps_s']} "
                                              f"(CPU {row[f'{side}_cpu_s_per_step']:.3f} s/step, load {row[f'load_before_{side}'][0]})" for side in sides)
                  + "; ratio " + ", ".join(f"{side} {row[f'ratio_{side}']:.3f} (CPU {row[f'cpu_ratio_{side}']:.3f})" for side in sides[::2]), flush=True)

        def med(key: str) -> float:
            return round(statistics.median(row[key] for row in rows), 3)

        summary = {f"{side}_s_per_step": round(statistics.median(x for row in rows for x in row[f"{side}_steps_s"]), 3) for side in sides}
        summary.update({f"{side}_cpu_s_per_step": med(f"{side}_cpu_s_per_step") for side in sides})
        for side in sides[::2]:
            summary[f"median_round_ratio_{side}"] = med(f"ratio_{side}")
            summary[f"median_step_ratio_{side}"] = round(summary[f"{side}_s_per_step"] / summary["minimal_s_per_step"], 3)
            summary[f"median_round_cpu_ratio_{side}"] = med(f"cpu_ratio_{side}")
        summary["load_before"], summary["load_after"] = rows[0]["load_before_ours"], load()
        result = {
            "settings": {"resolution": args.resolution, "batch": args.batch, "rank": args.rank, "alpha": args.rank, "threads": args.threads,
                         "steps_per_round": args.steps, "warmup": args.warmup, "rounds": args.rounds, "precision": "fp32",
                         "modules": len(ours_modules), "cached": "latents and text-encoder outputs"},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
            "rounds": rows, "summary": summary,
        }
        if args.parts:
            print("per-step pieces alone (ms, median):", flush=True)
            result["parts_ms"] = parts(ours.t, 5)
        if args.profile:
            ours.round()  # leave the profile its own epoch
            result["profile"] = profile(ours, work / "step_vs_minimal.prof")
            print("\n".join(result["profile"]), flush=True)
        print(json.dumps(summary))
        print(f"docs line: ours {summary['ours_s_per_step']:.2f} s/step, minimal {summary['minimal_s_per_step']:.2f} s/step (median step), "
              f"ours / minimal {summary['median_round_ratio_ours']:.2f} (median of {args.rounds} alternated rounds of {args.steps} steps; "
              f"CPU time {summary['median_round_cpu_ratio_ours']:.2f}), {args.threads} threads, load average "
              f"{summary['load_before'][0]}-{summary['load_after'][0]}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
