"""A full-size SDXL single file in the original layout (random fp16 weights) loads offline with the shipped
configs and trains one LoRA step on the CPU at a small resolution. Too heavy for the suite (a 6.9 GB file, about
15 GB of memory at the peak, minutes on two cores); run once and quoted in the closing note of issue 21.

    nice .venv/bin/python bench/sdxl_full_size_step.py [--work /tmp/sdxl-full] [--resolution 256] [--keep]

1. writes the file in a child process (so its memory is gone before loading): SDXL base 1.0's shapes from
   loratrainer/assets/sdxl, random weights, fp16, in the original (SGM) keys (tests/tiny_sdxl's reverse of
   diffusers' converter, which is checked bit-exact through diffusers' own converter in the tests);
2. loads it with model.components.load_components, the trainer's entry point, with HF_HUB_OFFLINE=1 and no
   config folder (the shipped configs), in bf16;
3. injects a Standard LoRA (dim 4) in the UNet and both text encoders, checks the module set against sd-scripts'
   own (tests/fixtures/sd_scripts_sdxl_lora_modules.json), runs one optimizer step at --resolution with SDXL's
   conditioning written out plainly here (both encoders' penultimate hidden states concatenated, text encoder 2's
   pooled output, the six size/crop numbers), and saves the LoRA file in Kohya's SDXL layout.

Run on 2026-12-06 on the shared 2-core, 23 GB helper machine (load average about 15 from other jobs, so the
times are long; niced), `nice .venv/bin/python bench/sdxl_full_size_step.py --keep`:

    wrote /tmp/sdxl-full/sdxl-random-fp16.safetensors: 2515 tensors, 3.469 G values, 6.94 GB, 324 s, peak RSS 7.6 GB
    loaded: SDXLComponents family=sdxl source='single file /tmp/sdxl-full/sdxl-random-fp16.safetensors' hash=f478b469
      unet 2.567 G, te1 123 M, te2 695 M, vae scaling 0.13025, tokenizer_2 pad '!'; 344 s, peak RSS 10.3 GB
    injected 986 LoRA modules (sd-scripts builds 986; same names: True); 117 s
    one step at 256x256 (latents (1, 4, 32, 32)): loss 1.2441, 1960 of 2958 LoRA tensors changed, finite: True;
      1069 s, peak RSS 10.3 GB
    saved /tmp/sdxl-full/sdxl-lora.safetensors (28.9 MB): 2958 tensors, 72 te1 / 192 te2 / 722 unet modules

The 2958 - 1960 unchanged tensors are the 986 alphas and the 6 modules of text encoder 1's last layer (down and up,
12): SDXL conditions on the penultimate hidden state, so that layer gets no gradient (the saved file's only all-zero
lora_up weights are lora_te1_text_model_encoder_layers_11_*).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"  # everything must come from the shipped configs


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def write_file(path: Path) -> None:
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loratrainer.model.assets import SDXL_CONFIG_DIR
    from tests.tiny_sdxl import tiny_sdxl_ldm_state_dict

    torch.manual_seed(0)
    t = time.time()
    with init_empty_weights():  # 2.6 G parameters: filled in fp16 directly instead of initialised in fp32
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_CONFIG_DIR, subfolder="unet"))
    unet = unet.to_empty(device="cpu").half()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)  # norm scales
            else:
                p.normal_(0.0, 1.0 / max(1, p[0].numel()) ** 0.5)  # unit-variance outputs
    te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder")).half()
    te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2")).half()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL_CONFIG_DIR, subfolder="vae")).half()

    class Parts:
        pass

    parts = Parts()
    parts.unet, parts.text_encoder, parts.text_encoder_2, parts.vae = unet, te1, te2, vae
    state = tiny_sdxl_ldm_state_dict(parts)
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    params = sum(v.numel() for v in state.values())
    print(f"wrote {path}: {len(state)} tensors, {params / 1e9:.3f} G values, {path.stat().st_size / 1e9:.2f} GB, "
          f"{time.time() - t:.0f} s, peak RSS {rss_gb():.1f} GB", flush=True)


def train_step(path: Path, resolution: int, out: Path) -> None:
    from loratrainer.compat import hide_broken_torchvision

    hide_broken_torchvision()
    import torch
    import torch.nn.functional as F

    from loratrainer.config import ModelSettings, NetworkSettings
    from loratrainer.model.components import load_components
    from loratrainer.model.kohya_format import lora_state_dict
    from loratrainer.model.lora import inject_lora
    from loratrainer.model.saving import save_lora

    t = time.time()
    c = load_components(ModelSettings(pretrained_model_name_or_path=str(path)), dtype=torch.bfloat16)
    print(f"loaded: {type(c).__name__} family={c.family} source={c.source!r} hash={c.model_hash} "
          f"unet {sum(p.numel() for p in c.unet.parameters()) / 1e9:.3f} G, te1 "
          f"{sum(p.numel() for p in c.text_encoder.parameters()) / 1e6:.0f} M, te2 "
          f"{sum(p.numel() for p in c.text_encoder_2.parameters()) / 1e6:.0f} M, vae scaling "
          f"{c.vae.config.scaling_factor}, tokenizer_2 pad {c.tokenizer_2.pad_token!r}; {time.time() - t:.0f} s, "
          f"peak RSS {rss_gb():.1f} GB", flush=True)

    t = time.time()
    handle = inject_lora(c, NetworkSettings(network_dim=4, network_alpha=1), train_unet=True, train_text_encoder=True)
    expected = json.loads((ROOT / "tests/fixtures/sd_scripts_sdxl_lora_modules.json").read_text())["modules"]["Standard"]
    same = set(handle.modules) == set(expected)
    print(f"injected {len(handle.modules)} LoRA modules (sd-scripts builds {len(expected)}; same names: {same}); "
          f"{time.time() - t:.0f} s", flush=True)
    c.unet.enable_gradient_checkpointing()
    params = handle.unet_parameters() + handle.text_encoder_parameters() + handle.text_encoder_2_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    before = {k: v.clone() for k, v in lora_state_dict(handle, "float").items()}

    t = time.time()
    torch.manual_seed(0)
    image = torch.rand(1, 3, resolution, resolution) * 2 - 1
    prompt = "a photo of a cat sitting on a wooden chair"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            latents = c.vae.encode(image.to(torch.bfloat16)).latent_dist.sample() * c.vae.config.scaling_factor
        ids1 = c.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        ids2 = c.tokenizer_2(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out1 = c.text_encoder(ids1, output_hidden_states=True)
        out2 = c.text_encoder_2(ids2, output_hidden_states=True)
        # sd-scripts (sdxl_train_util / strategy_sdxl): penultimate hidden states of both, concatenated; pooled = text_embeds
        hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        pooled = out2.text_embeds
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=hidden.dtype)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (1,))
        noisy = c.noise_scheduler.add_noise(latents, noise, timesteps)
        pred = c.unet(noisy, timesteps, hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        loss = F.mse_loss(pred.float(), noise.float())
    loss.backward()
    optimizer.step()
    after = lora_state_dict(handle, "float")
    changed = sum(not torch.equal(before[k], after[k]) for k in before)
    print(f"one step at {resolution}x{resolution} (latents {tuple(latents.shape)}): loss {loss.item():.4f}, "
          f"{changed} of {len(before)} LoRA tensors changed, finite: {all(torch.isfinite(v).all() for v in after.values())}; "
          f"{time.time() - t:.0f} s, peak RSS {rss_gb():.1f} GB", flush=True)
    saved = save_lora(out, lora_state_dict(handle, "fp16"), {"ss_base_model_version": "sdxl_base_v1-0"}, overwrite=True)
    print(f"saved {saved} ({saved.stat().st_size / 1e6:.1f} MB): {len(after)} tensors, "
          f"{sum(k.startswith('lora_te1_') for k in after) // 3} te1 / {sum(k.startswith('lora_te2_') for k in after) // 3} te2 / "
          f"{sum(k.startswith('lora_unet_') for k in after) // 3} unet modules", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdxl-full"))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--keep", action="store_true", help="keep the 6.9 GB file for another run")
    parser.add_argument("--stage", choices=["all", "write", "train"], default="all")
    args = parser.parse_args()
    path = args.work / "sdxl-random-fp16.safetensors"
    if args.stage == "write":
        return write_file(path)
    if args.stage == "train":
        return train_step(path, args.resolution, args.work / "sdxl-lora.safetensors")
    if not path.exists():
        subprocess.run([sys.executable, __file__, "--work", str(args.work), "--stage", "write"], check=True)
    subprocess.run([sys.executable, __file__, "--work", str(args.work), "--stage", "train",
                    "--resolution", str(args.resolution)], check=True)
    if not args.keep:
        path.unlink()


if __name__ == "__main__":
    main()
