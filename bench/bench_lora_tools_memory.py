"""Peak memory of the LoRA tools on full-size SD1.5 files (docs/lora-tools.md quotes the result).

Inputs, random values with SD1.5's real module names and shapes:
- a Kohya LoRA of rank 128 in fp16 on the full module set (144 MB, the size of a typical dim-128 SD1.5 LoRA),
  shapes from SD1.5's configs built on the meta device;
- an fp16 SD1.5 checkpoint in the original single-file (LDM) layout (about 2 GB), written from a full-size
  diffusers folder (`MODEL_DIR`, e.g. a random-weights SD1.5 folder; default: random tensors of the shipped
  configs' shapes), renamed with the test suite's diffusers -> LDM key functions (tests/tiny_sd.py).
merge-into's output (the checkpoint with the LoRA baked in) is then the TUNED model of `extract`.

Each tool runs as `python -m loratrainer lora ...` in its own process, one at a time, under GNU time. Its peak resident set comes
from the kernel (time's %M, ru_maxrss: anonymous memory plus the pages of memory-mapped inputs it touched);
its anonymous memory (RssAnon: what the process itself allocated) is sampled every 20 ms. The baselines are
`lora inspect` and `lora resize` of a tiny file: what Python, torch (and for inspect, extract and merge-into,
diffusers) cost before any tensor is read.

    PYTHONPATH=. nice -n 10 python bench/bench_lora_tools_memory.py /tmp/lora-bench [MODEL_DIR]   # ~14 GB of disk
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


def make_checkpoint(path: Path, model_dir: Path | None = None) -> Path:
    """The fp16 single-file checkpoint, tensor by tensor: from `model_dir`'s weights, else random values."""
    from loratrainer.tools.model_weights import TensorFile, component_files
    from loratrainer.tools.writer import StreamingSafetensorsWriter
    from tests.tiny_sd import unet_key_to_ldm, vae_key_to_ldm

    unet, vae, te = sd15_meta()
    up_has_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    torch.manual_seed(0)
    with StreamingSafetensorsWriter(path, check_finite=False) as w:
        for part, prefix, model, rename in (
            ("unet", "model.diffusion_model.", unet, lambda k: unet_key_to_ldm(k, unet.config.layers_per_block, up_has_attn)),
            ("vae", "first_stage_model.", vae, lambda k: vae_key_to_ldm(k, len(vae.config.block_out_channels))),
            ("text_encoder", "cond_stage_model.transformer.", te, lambda k: k if k.startswith("text_model.") else "text_model." + k),
        ):
            files = [TensorFile(p) for p in component_files(model_dir / part, part)] if model_dir else []
            where = {k: f for f in files for k in f.keys}
            for key, t in model.state_dict().items():
                shape = list(t.shape)
                ldm = rename(key)
                if prefix == "first_stage_model." and ".mid.attn_1." in ldm and len(shape) == 2:
                    shape += [1, 1]
                if model_dir:
                    stored = where.get(key) or where["text_model." + key]
                    value = stored.tensor(key if key in stored.keys else "text_model." + key).reshape(shape)
                else:
                    value = torch.randn(shape) * 0.02
                w.add(prefix + ldm, value.half())
        w.finish({})
    return path


def peak(argv: list[str]) -> dict:
    import threading

    # GNU time runs the tool as its child and reports the child's own peak RSS (%M, from wait4's ru_maxrss). Not
    # wait4 on a child of this process: Linux keeps ru_maxrss across exec, so a child forked from this process
    # (which has just read gigabytes) would report this process's size.
    proc = subprocess.Popen(["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-m", "loratrainer", "lora", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    anon = [0]
    running = [True]

    def sample():
        tool = None
        while running[0]:
            try:
                if tool is None:
                    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                    tool = children[0] if children else None
                if tool is not None:
                    for line in Path(f"/proc/{tool}/status").read_text().splitlines():
                        if line.startswith("RssAnon:"):
                            anon[0] = max(anon[0], int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    err = proc.stderr.read()
    proc.wait()
    running[0] = False
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed: {err[-2000:]}")
    maxrss = int(err.strip().splitlines()[-1].split()[1])
    return {"peak_rss_mb": round(maxrss / 1024), "peak_anon_mb": round(anon[0] / 1024),
            "seconds": round(time.monotonic() - start, 1)}


def main(folder: str, model_dir: str | None = None) -> None:
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
        make_checkpoint(ckpt, Path(model_dir) if model_dir else None)
    for old in work.glob("out-*"):
        subprocess.run(["rm", "-rf", "--", str(old)], check=True)  # only the bench's own outputs
    results = {"files": {lora.name: lora.stat().st_size, ckpt.name: ckpt.stat().st_size}}
    baked = work / "out-baked.safetensors"
    runs = {
        "baseline: inspect of a tiny LoRA (Python, torch, diffusers)": ["inspect", str(tiny)],
        "baseline: resize of a tiny LoRA (Python, torch)": ["resize", str(tiny), "--rank", "2", "-o", str(work / "out-tiny.safetensors")],
        "inspect 144 MB LoRA": ["inspect", str(lora)],
        "resize 144 MB LoRA to rank 32": ["resize", str(lora), "--rank", "32", "-o", str(work / "out-resized.safetensors")],
        "merge 2 x 144 MB, exact": ["merge", str(lora), f"{lora}:0.5", "-o", str(work / "out-merged.safetensors")],
        "merge 2 x 144 MB, --rank 64": ["merge", str(lora), f"{lora}:0.5", "--rank", "64", "-o", str(work / "out-merged64.safetensors")],
        "merge-into 2 GB checkpoint + 144 MB LoRA": ["merge-into", str(ckpt), str(lora), "-o", str(baked)],
        "merge-into 2 GB checkpoint + 144 MB LoRA, --diffusers": ["merge-into", str(ckpt), str(lora), "--diffusers", str(work / "out-baked-diffusers")],
        "extract 2 GB BASE vs 2 GB TUNED (merge-into's output), --rank 64": [
            "extract", str(ckpt), str(baked), "--rank", "64", "--min-diff", "0.001", "-o", str(work / "out-extracted.safetensors")],
    }
    if model_dir:
        runs[f"merge-into diffusers folder ({model_dir}) + 144 MB LoRA, --diffusers"] = [
            "merge-into", model_dir, str(lora), "--diffusers", str(work / "out-folder-baked")]
    for label, argv in runs.items():
        results[label] = peak(argv)
        print(f"{label:70} {results[label]}", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lora-bench", sys.argv[2] if len(sys.argv) > 2 else None)
