"""The noise added to latents: offset noise, multi-resolution (pyramid) noise, input perturbation. The settings are
the config's own `noise` group (NoiseSettings), read by their names."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from loratrainer.config import NoiseSettings


def item_generators(seeds: list[int] | None, device: torch.device) -> list[torch.Generator] | None:
    """A generator per batch item from its noise seed (train.dataset.noise_seed): an item's noise and timestep do
    not depend on which process trains it or on what else is in its batch."""
    if seeds is None:
        return None
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def _randn(shape: tuple[int, ...], like: torch.Tensor, generators) -> torch.Tensor:
    """randn of (batch, *shape[1:]) from the global RNG, or item by item from each item's generator."""
    if generators is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.stack([torch.randn(shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generators])


def sample_noise(latents: torch.Tensor, s: NoiseSettings, generators=None) -> torch.Tensor:
    """The noise the UNet learns to predict (Kohya applies the offset first, then the pyramid)."""
    if generators is not None:  # item by item, each from its own generator, in the same order of draws
        return torch.cat([_sample_noise(latents[i : i + 1], s, [g]) for i, g in enumerate(generators)])
    return _sample_noise(latents, s, None)


def _sample_noise(latents: torch.Tensor, s: NoiseSettings, generators) -> torch.Tensor:
    noise = _randn(tuple(latents.shape), latents, generators)
    if s.noise_offset:
        # https://www.crosslabs.org//blog/diffusion-with-offset-noise
        noise = noise + s.noise_offset * _randn((latents.shape[0], latents.shape[1], 1, 1), latents, generators)
    if s.multires_noise_iterations:
        noise = pyramid_noise_like(noise, s.multires_noise_iterations, s.multires_noise_discount, generators[0] if generators else None)
    return noise


def pyramid_noise_like(noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-resolution noise, https://wandb.ai/johnowhitaker/multires_noise (as sd-scripts implements it: the
    first level, i = 0, is another full-resolution noise; each later one is coarser by a random factor 2-4)."""
    b, c, h, w = noise.shape
    for i in range(iterations):
        r = (random.random() if generator is None else float(torch.rand((), generator=generator, device=generator.device))) * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        low = torch.randn(b, c, hn, wn, device=noise.device, dtype=noise.dtype, generator=generator)
        noise = noise + F.interpolate(low, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def sample_timesteps(batch_size: int, num_train_timesteps: int, device: torch.device, generators=None) -> torch.Tensor:
    if generators is not None:
        return torch.cat([torch.randint(0, num_train_timesteps, (1,), device=device, generator=g) for g in generators]).long()
    return torch.randint(0, num_train_timesteps, (batch_size,), device=device).long()


def noisy_latents(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, s: NoiseSettings,
                  generators=None) -> torch.Tensor:
    """Input perturbation (https://arxiv.org/abs/2301.11706) noises the input more than the target says."""
    if s.ip_noise_gamma:
        noise = noise + s.ip_noise_gamma * _randn(tuple(noise.shape), noise, generators)
    return scheduler.add_noise(latents, noise, timesteps)
