"""Peak memory of the LoRA tools on full-size SD1.5 files (docs/lora-tools.md quotes the result).

Generates, with SD1.5's real module names and shapes (models built on the meta device from the shipped configs):
a Kohya LoRA of rank 128 in fp16 (144 MB, the size of a typical dim-128 SD1.5 LoRA) and an fp16 SD1.5 checkpoint
in the original single-file layout (about 2 GB), random values. Each tool runs as `python -m loratrainer lora ...`
in its own process; its resident memory (VmRSS: anonymous + file-backed pages) and anonymous memory (RssAnon: what
the process itself allocated) are sampled every 20 ms, and the peaks printed. The baseline is `lora inspect` of a
tiny file: what Python, torch and diffusers cost before any tensor is read.

    PYTHONPATH=. python bench/bench_lora_tools_memory.py /tmp/lora-bench    # needs ~8 GB of disk
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def sd15_meta():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from loratrainer.model.assets import SD15_CONFIG_DIR

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    return unet, vae, te


def make_lora(path: Path, rank: int = 128) -> Path:
    from loratrainer.model.lora import kohya_name, target_modules
    from loratrainer.tools.writer import StreamingSafetensorsWriter

    unet, _, te = sd15_meta()
    torch.manual_seed(0)
    with StreamingSafetensorsWriter(path) as w:
        for part, model in (("unet", unet), ("text_encoder", te)):
            for p in target_modules(model, part, conv=False):
                weight = model.get_submodule(p).weight
                name = kohya_name(part, p)
                down_shape = (rank, *weight.shape[1:])
                up_shape = (weight.shape[0], rank, *([1, 1] if weight.ndim == 4 else []))
                w.add(name + ".lora_down.weight", (torch.randn(down_shape) * 0.02).half())
                w.add(name + ".lora_up.weight", (torch.randn(up_shape) * 0.02).half())
                w.add(name + ".alpha", torch.tensor(float(rank)).half())
        w.finish({"ss_network_dim": str(rank), "ss_base_model_version": "sd_v1"}, kohya_hashes=True)
    return path


def make_checkpoint(path: Path) -> Path:
    from loratrainer.tools.writer import StreamingSafetensorsWriter
    from tests.tiny_sd import unet_key_to_ldm, vae_key_to_ldm

    unet, vae, te = sd15_meta()
    up_has_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    torch.manual_seed(0)
    with StreamingSafetensorsWriter(path, check_finite=False) as w:
        for prefix, model, rename in (
            ("model.diffusion_model.", unet, lambda k: unet_key_to_ldm(k, unet.config.layers_per_block, up_has_attn)),
            ("first_stage_model.", vae, lambda k: vae_key_to_ldm(k, len(vae.config.block_out_channels))),
            ("cond_stage_model.transformer.", te, lambda k: k if k.startswith("text_model.") else "text_model." + k),
        ):
            for key, t in model.state_dict().items():
                shape = list(t.shape)
                ldm = rename(key)
                if prefix == "first_stage_model." and ".mid.attn_1." in ldm and len(shape) == 2:
                    shape += [1, 1]
                w.add(prefix + ldm, (torch.randn(shape) * 0.02).half())
        w.finish({})
    return path


def peak(argv: list[str]) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "loratrainer", "lora", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    rss = anon = 0
    start = time.monotonic()
    while proc.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ":" in line)
            rss = max(rss, int(fields["VmRSS"].split()[0]))
            anon = max(anon, int(fields["RssAnon"].split()[0]))
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.02)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed: {err[-2000:]}")
    return {"peak_rss_mb": round(rss / 1024), "peak_anon_mb": round(anon / 1024), "seconds": round(time.monotonic() - start, 1)}


def main(folder: str) -> None:
    from tests.test_lora_tools import make_lora as tiny_lora

    work = Path(folder)
    work.mkdir(parents=True, exist_ok=True)
    tiny = work / "tiny.safetensors"
    if not tiny.exists():
        tiny_lora(tiny, 1, dim=4, alpha=4)
    lora = work / "lora-144mb.safetensors"
    if not lora.exists():
        make_lora(lora)
    ckpt = work / "sd15-fp16.safetensors"
    if not ckpt.exists():
        make_checkpoint(ckpt)
    for old in work.glob("out-*"):
        old.unlink()
    results = {"files": {lora.name: lora.stat().st_size, ckpt.name: ckpt.stat().st_size}}
    runs = {
        "baseline (inspect of a tiny LoRA)": ["inspect", str(tiny)],
        "inspect 144 MB LoRA": ["inspect", str(lora)],
        "resize 144 MB LoRA to rank 32": ["resize", str(lora), "--rank", "32", "-o", str(work / "out-resized.safetensors")],
        "merge 2 x 144 MB, exact": ["merge", str(lora), f"{lora}:0.5", "-o", str(work / "out-merged.safetensors")],
        "merge 2 x 144 MB, --rank 64": ["merge", str(lora), f"{lora}:0.5", "--rank", "64", "-o", str(work / "out-merged64.safetensors")],
        "merge-into 2 GB checkpoint + 144 MB LoRA": ["merge-into", str(ckpt), str(lora), "-o", str(work / "out-baked.safetensors")],
    }
    for label, argv in runs.items():
        results[label] = peak(argv)
        print(f"{label:45} {results[label]}", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lora-bench")
