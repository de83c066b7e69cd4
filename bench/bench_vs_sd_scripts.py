"""Speed and memory side by side with kohya-ss/sd-scripts' train_network.py, on the same model, data and settings.

Both trainers train a LoRA on one full-size SD1.5-architecture model (random weights built from the shipped
SD1.5 configs and saved once as a diffusers folder), on the same images and captions, with the same settings
(resolution, batch, rank/alpha, AdamW, cached latents, precision, gradient checkpointing, SDPA attention, seed,
both the UNet and the text encoder trained). Runs alternate A B A B so that a busy machine slows both alike.

Per run it reports, each from the trainer's own record:
- ms/step: median of the step-to-step intervals after --warmup steps (ours: events.jsonl `progress` times with a
  progress event for every step; sd-scripts: the wall times of its TensorBoard `loss/current` scalars);
- CPU ms/step: the CPU seconds the trainer's process tree spent between the same two step times (sampled every
  0.2 s and interpolated). On a machine that other jobs share, wall time per step depends on them; CPU time per
  step with `--threads 1` hardly does, so on a busy machine compare that (with several threads, OpenMP workers
  spin while they wait for a descheduled peer, and both figures swell with the load);
- start-up: seconds from starting the command to the end of the first step;
- peak memory: the highest RSS of the whole process tree (sampled every 0.2 s) and, on a GPU,
  nvidia-smi's highest used memory of the card;
- and then the ratio ours / sd-scripts of the medians over rounds.
Afterwards both LoRA files are loaded into a diffusers pipeline of the same model (no missing or unexpected
keys) and their module sets compared.

sd-scripts runs from a checkout given by --sd-scripts, with its requirements installed into a separate
virtual environment under bench/.venvs/ (never into the project's .venv). Its torch must come with a matching
torchvision, which sd-scripts imports; `--torch` says which (on this CPU machine: torch==2.14.1
torchvision==0.29.1). So that both trainers use the same torch, ours runs from a second bench venv with the
same torch unless --ours-python names another interpreter.

    .venv/bin/python bench/bench_vs_sd_scripts.py --sd-scripts ~/src/sd-scripts [--resolution 256]
        [--batch 1] [--steps 8] [--warmup 3] [--rounds 2] [--gradient-checkpointing] [--json out.json]

On a GPU add e.g. `--resolution 512 --batch 8 --mixed-precision bf16`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VENVS = ROOT / "bench" / ".venvs"
TOKENIZER_ID = "openai/clip-vit-large-patch14"  # the id sd-scripts asks for; served from --tokenizer_cache_dir


@dataclass
class RunResult:
    trainer: str
    round: int
    step_times_s: list[float]
    startup_s: float
    peak_rss_mib: float
    peak_gpu_mib: float | None
    wall_s: float
    lora: str
    cpu_step_s: list[float] = field(default_factory=list)  # CPU seconds of the process tree per step
    startup_cpu_s: float = 0.0  # CPU seconds of the process tree to the end of the first step
    ms_per_step: float = 0.0
    cpu_ms_per_step: float = 0.0

    def __post_init__(self) -> None:
        self.ms_per_step = statistics.median(self.step_times_s) * 1000 if self.step_times_s else float("nan")
        self.cpu_ms_per_step = statistics.median(self.cpu_step_s) * 1000 if self.cpu_step_s else float("nan")


@dataclass
class Settings:
    resolution: int = 256
    batch: int = 1
    steps: int = 8
    warmup: int = 3
    dim: int = 16
    alpha: float = 8.0
    learning_rate: float = 1e-4
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 42
    images: int = 4
    threads: int = 2
    extra: dict = field(default_factory=dict)


# --- environments -------------------------------------------------------------------------------------------


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(path: Path, installs: list[list[str]]) -> Path:
    """Create a venv and run the pip installs once (a stamp records what was installed)."""
    stamp = path / ".bench-installed"
    wanted = json.dumps(installs)
    if stamp.exists() and stamp.read_text() == wanted:
        return venv_python(path)
    if not venv_python(path).exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    for args in installs:
        subprocess.run([str(venv_python(path)), "-m", "pip", "install", "-q", *args], check=True)
    stamp.write_text(wanted)
    return venv_python(path)


def sd_scripts_env(venvs: Path, checkout: Path, torch_spec: list[str]) -> Path:
    reqs = [line.strip() for line in (checkout / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r and not r.startswith(("#", "-e"))]  # `-e .` installs the checkout itself: not needed
    return ensure_venv(venvs / "sd-scripts", [torch_spec, reqs])


def ours_env(venvs: Path, torch_spec: list[str]) -> Path:
    return ensure_venv(venvs / "loratrainer", [torch_spec, ["-e", str(ROOT)]])  # editable: always this checkout


def torch_version(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


# --- model and data -----------------------------------------------------------------------------------------


def build_model(folder: Path) -> Path:
    """Full-size SD1.5 shapes, random weights, fp32, as a diffusers folder (built once, then reused)."""
    if (folder / "unet" / "diffusion_pytorch_model.safetensors").exists():
        return folder
    from bench.bench_gpu import random_sd15
    import torch

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    random_sd15(tmp, torch.float32)
    tmp.rename(folder)
    return folder


def build_tokenizer_cache(folder: Path) -> Path:
    """sd-scripts loads CLIP's tokenizer from the hub unless --tokenizer_cache_dir holds it (no network here)."""
    from loratrainer.model.assets import SD15_CONFIG_DIR

    target = folder / TOKENIZER_ID.replace("/", "_")
    if not target.exists():
        shutil.copytree(SD15_CONFIG_DIR / "tokenizer", target, ignore=shutil.ignore_patterns("*.py"))
    return folder


def build_dataset(folder: Path, count: int, size: int) -> Path:
    """`image/10_bench/` with textured images (a noise pattern, not a flat colour) and one caption each."""
    import numpy as np
    from PIL import Image

    concept = folder / "10_bench"
    concept.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = (rng.random((size, size, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(concept / f"img_{i:02d}.png")
        (concept / f"img_{i:02d}.txt").write_text(f"bench style, picture number {i}\n", encoding="utf-8")
    return folder


# --- commands -----------------------------------------------------------------------------------------------


def sd_scripts_command(python: Path, checkout: Path, model: Path, data: Path, out: Path, tok: Path, s: Settings) -> list[str]:
    cmd = [
        str(python), "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", s.mixed_precision, "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(s.threads),
        str(checkout / "train_network.py"),
        "--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--output_dir", str(out / "model"),
        "--output_name", "bench", "--logging_dir", str(out / "log"), "--log_with", "tensorboard",
        "--resolution", f"{s.resolution},{s.resolution}", "--train_batch_size", str(s.batch),
        "--network_module", "networks.lora", "--network_dim", str(s.dim), "--network_alpha", str(s.alpha),
        "--optimizer_type", "AdamW", "--learning_rate", str(s.learning_rate), "--lr_scheduler", "constant",
        "--max_train_steps", str(s.steps), "--cache_latents", "--sdpa", "--mixed_precision", s.mixed_precision,
        "--save_precision", "fp16", "--save_model_as", "safetensors", "--caption_extension", ".txt",
        "--seed", str(s.seed), "--max_data_loader_n_workers", "0", "--tokenizer_cache_dir", str(tok),
    ]  # left at their defaults, as ours: max_token_length (75 tokens), clip_skip (1), no buckets at one size
    if s.gradient_checkpointing:
        cmd.append("--gradient_checkpointing")
    return cmd


def ours_config(model: Path, data: Path, out: Path, s: Settings) -> dict:
    return {
        "schema_version": 1,
        "model": {"pretrained_model_name_or_path": str(model)},
        "folders": {"train_data_dir": str(data), "output_dir": str(out / "model"), "logging_dir": str(out / "log"),
                    "output_name": "bench"},
        "dataset": {"caption_extension": ".txt", "max_data_loader_n_workers": 0},
        "buckets": {"max_resolution": f"{s.resolution},{s.resolution}", "min_bucket_reso": min(256, s.resolution)},
        "network": {"network_dim": s.dim, "network_alpha": s.alpha},
        "optimizer": {"optimizer": "AdamW", "learning_rate": s.learning_rate, "unet_lr": s.learning_rate,
                      "text_encoder_lr": s.learning_rate, "lr_scheduler": "constant", "train_batch_size": s.batch,
                      "max_train_steps": s.steps, "seed": s.seed},
        "precision": {"mixed_precision": s.mixed_precision, "save_precision": "fp16", "cache_latents": True,
                      "gradient_checkpointing": s.gradient_checkpointing, "attention": "sdpa"},
        "saving": {"save_every_n_epochs": 0},
        "launch": {"num_cpu_threads_per_process": s.threads},
    }


# --- measuring ----------------------------------------------------------------------------------------------


class PeakMemory(threading.Thread):
    """The highest summed RSS of a process and all its descendants, nvidia-smi's highest figure, and the tree's
    CPU time over wall time (sampled together, so a step's CPU seconds can be read between two wall times)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.rss, self.gpu, self.done = pid, 0, None, threading.Event()
        self.cpu_samples: list[tuple[float, float]] = []  # (wall time, CPU seconds of the live tree)

    def run(self) -> None:
        import psutil

        smi = shutil.which("nvidia-smi")
        while not self.done.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                self.rss = max(self.rss, sum(_rss(p) for p in procs))
                self.cpu_samples.append((time.time(), sum(_cpu(p) for p in procs)))
            except psutil.NoSuchProcess:
                pass
            if smi:
                out = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True)
                if out.returncode == 0 and out.stdout.strip():
                    self.gpu = max(self.gpu or 0, float(out.stdout.split()[0]))
            self.done.wait(0.2)


def _cpu(p) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except Exception:  # the process ended between listing and reading
        return 0.0


def cpu_at(samples: list[tuple[float, float]], when: float) -> float:
    """The tree's CPU seconds at a wall time, interpolated between the two samples around it."""
    before = [s for s in samples if s[0] <= when]
    after = [s for s in samples if s[0] >= when]
    if not before or not after:
        return (before or after)[-1 if before else 0][1]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except Exception:  # the process ended between listing and reading
        return 0


def run_measured(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, float, float, float | None, list]:
    """Run to the end; returns (start time, wall seconds, peak RSS MiB, peak GPU MiB, CPU-time samples)."""
    with open(log, "wb") as out:
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        meter = PeakMemory(proc.pid)
        meter.start()
        code = proc.wait()
        meter.done.set()
        meter.join()
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{cmd[0]} ... exited {code}; the end of {log}:\n{tail}")
    return start, time.time() - start, meter.rss / 2**20, meter.gpu, meter.cpu_samples


def ours_step_times(out: Path) -> list[float]:
    [events] = list((out / "log").glob("bench_*/events.jsonl"))
    from datetime import datetime

    times = [datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
             for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "progress"]
    return times


def sd_scripts_step_times(out: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times: list[float] = []
    for events in (out / "log").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "loss/current" in acc.Tags()["scalars"]:
            times += [e.wall_time for e in acc.Scalars("loss/current")]
    return sorted(times)


def intervals(times: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])][max(warmup - 1, 0):]


def one_run(trainer: str, rnd: int, args, s: Settings, paths: dict) -> RunResult:
    out = paths["work"] / f"{trainer}-{rnd}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORATRAINER_", "PYTHONPATH"))}
    env.update(OMP_NUM_THREADS=str(s.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if trainer == "sd-scripts":
        cmd = sd_scripts_command(paths["sd_python"], args.sd_scripts, paths["model"], paths["data"], out, paths["tok"], s)
        start, wall, rss, gpu, cpu = run_measured(cmd, args.sd_scripts, env, out / "console.log")
        times = sd_scripts_step_times(out)
    else:
        config = out / "config.json"
        config.write_text(json.dumps(ours_config(paths["model"], paths["data"], out, s), indent=1))
        env["LORATRAINER_PROGRESS_INTERVAL_S"] = "0"  # a progress event for every step, as sd-scripts logs every step
        cmd = [str(paths["ours_python"]), "-m", "loratrainer", "train", "--config", str(config)]
        start, wall, rss, gpu, cpu = run_measured(cmd, out, env, out / "console.log")
        times = ours_step_times(out)
    if len(times) < s.steps:
        raise SystemExit(f"{trainer} logged {len(times)} steps of {s.steps}: see {out}")
    [lora] = [p for p in (out / "model").glob("*.safetensors")]
    cpu_times = [cpu_at(cpu, t) for t in times]
    return RunResult(trainer, rnd, intervals(times, s.warmup), times[0] - start, rss, gpu, wall, str(lora),
                     cpu_step_s=intervals(cpu_times, s.warmup), startup_cpu_s=cpu_times[0])


# --- the LoRA files -----------------------------------------------------------------------------------------


def module_set(path: str) -> set[str]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {k.split(".")[0] for k in f.keys()}


def diffusers_load_problems(model: Path, lora: str) -> list[str]:
    """Load the file into a diffusers pipeline of the bench model; the warnings it logs name any key problem."""
    import logging

    import torch
    from diffusers import StableDiffusionPipeline

    records: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Catch(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, torch_dtype=torch.float32)
        pipe.load_lora_weights(lora)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    return [r for r in records if any(w in r.lower() for w in ("missing", "unexpected", "not", "error"))]


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sd-scripts", type=Path, required=True, help="a checkout of kohya-ss/sd-scripts")
    p.add_argument("--torch", default="torch==2.14.1 torchvision==0.29.1",
                   help="the torch (and torchvision) requirement for both bench venvs")
    p.add_argument("--ours-python", type=Path, help="run loratrainer with this interpreter instead of a bench venv")
    p.add_argument("--venvs", type=Path, default=VENVS, help="where the two bench venvs live")
    p.add_argument("--work", type=Path, default=VENVS.parent / ".work", help="model, data and run folders")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    p.add_argument("--rounds", type=int, default=2, help="A B pairs")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per trainer process")
    p.add_argument("--skip-diffusers-check", action="store_true", help="leave out the diffusers load of both files")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.sd_scripts = args.sd_scripts.resolve()
    if not (args.sd_scripts / "train_network.py").exists():
        p.error(f"{args.sd_scripts} is not an sd-scripts checkout (no train_network.py)")

    s = Settings(resolution=args.resolution, batch=args.batch, steps=args.steps, warmup=args.warmup, dim=args.dim,
                 alpha=args.alpha, mixed_precision=args.mixed_precision,
                 gradient_checkpointing=args.gradient_checkpointing, threads=args.threads)
    torch_spec = args.torch.split()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print("setting up the two environments (first run only) ...", flush=True)
    paths = {
        "work": work,
        "sd_python": sd_scripts_env(args.venvs, args.sd_scripts, torch_spec),
        "ours_python": args.ours_python or ours_env(args.venvs, torch_spec),
        "model": build_model(work / "sd15-random"),
        "tok": build_tokenizer_cache(work / "tokenizers"),
        "data": build_dataset(work / f"image-{s.resolution}", s.images, s.resolution),
    }
    versions = {"sd-scripts torch": torch_version(paths["sd_python"]), "ours torch": torch_version(paths["ours_python"])}
    commit = subprocess.run(["git", "-C", str(args.sd_scripts), "rev-parse", "HEAD"], capture_output=True, text=True)
    versions["sd-scripts commit"] = commit.stdout.strip() or "unknown"
    print(json.dumps(versions), flush=True)

    results: list[RunResult] = []
    for rnd in range(args.rounds):
        for trainer in ("sd-scripts", "ours"):
            r = one_run(trainer, rnd, args, s, paths)
            results.append(r)
            print(f"round {rnd} {trainer:10s} {r.ms_per_step:8.0f} ms/step  {r.cpu_ms_per_step:8.0f} CPU ms/step  start-up {r.startup_s:6.1f} s  "
                  f"peak RSS {r.peak_rss_mib:7.0f} MiB" + (f"  GPU {r.peak_gpu_mib:.0f} MiB" if r.peak_gpu_mib else ""),
                  flush=True)

    def med(trainer: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results if r.trainer == trainer)

    summary = {t: {a: med(t, a) for a in ("ms_per_step", "cpu_ms_per_step", "startup_s", "startup_cpu_s", "peak_rss_mib")} for t in ("ours", "sd-scripts")}
    ratio = {a: summary["ours"][a] / summary["sd-scripts"][a] for a in summary["ours"]}
    ours_file = next(r.lora for r in results if r.trainer == "ours")
    theirs_file = next(r.lora for r in results if r.trainer == "sd-scripts")
    ours_mods, theirs_mods = module_set(ours_file), module_set(theirs_file)
    check = {"same_module_set": ours_mods == theirs_mods, "modules": len(ours_mods),
             "only_ours": sorted(ours_mods - theirs_mods)[:10], "only_sd_scripts": sorted(theirs_mods - ours_mods)[:10]}
    if not args.skip_diffusers_check:
        check["diffusers_problems_ours"] = diffusers_load_problems(paths["model"], ours_file)
        check["diffusers_problems_sd_scripts"] = diffusers_load_problems(paths["model"], theirs_file)
    report = {"settings": asdict(s), "versions": versions, "runs": [asdict(r) for r in results],
              "median": summary, "ratio_ours_over_sd_scripts": ratio, "lora_files": check}
    print(json.dumps({"median": summary, "ratio_ours_over_sd_scripts": ratio, "lora_files": check}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if check["same_module_set"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
