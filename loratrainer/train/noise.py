"""The noise added to latents: offset noise, multi-resolution (pyramid) noise, input perturbation."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loratrainer.config import OptimizerSettings


@dataclass(frozen=True)
class NoiseSettings:
    offset: float = 0.0
    multires_iterations: int = 0
    multires_discount: float = 0.3
    ip_gamma: float = 0.0

    @classmethod
    def from_settings(cls, o: OptimizerSettings) -> "NoiseSettings":
        return cls(o.noise_offset, o.multires_noise_iterations, o.multires_noise_discount, o.ip_noise_gamma)


def sample_noise(latents: torch.Tensor, s: NoiseSettings) -> torch.Tensor:
    """The noise the UNet learns to predict (Kohya applies the offset first, then the pyramid)."""
    noise = torch.randn_like(latents)
    if s.offset:
        # https://www.crosslabs.org//blog/diffusion-with-offset-noise
        noise = noise + s.offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=latents.device, dtype=latents.dtype)
    if s.multires_iterations:
        noise = pyramid_noise_like(noise, s.multires_iterations, s.multires_discount)
    return noise


def pyramid_noise_like(noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise, https://wandb.ai/johnowhitaker/multires_noise (as sd-scripts implements it: the
    first level, i = 0, is another full-resolution noise; each later one is coarser by a random factor 2-4)."""
    b, c, h, w = noise.shape
    for i in range(iterations):
        r = random.random() * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        low = torch.randn(b, c, hn, wn, device=noise.device, dtype=noise.dtype)
        noise = noise + F.interpolate(low, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def sample_timesteps(batch_size: int, num_train_timesteps: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (batch_size,), device=device).long()


def noisy_latents(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, s: NoiseSettings) -> torch.Tensor:
    """Input perturbation (https://arxiv.org/abs/2301.11706) noises the input more than the target says."""
    if s.ip_gamma:
        noise = noise + s.ip_gamma * torch.randn_like(noise)
    return scheduler.add_noise(latents, noise, timesteps)
