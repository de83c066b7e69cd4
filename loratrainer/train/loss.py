"""The training loss: target by prediction type, l2/huber/smooth-L1, min-SNR and prior-loss weights. The settings are
the config's own `loss` group (LossSettings) and `dataset.prior_loss_weight`, read by their names."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from loratrainer.config import LossSettings
from loratrainer.train.masks import apply_masked_loss


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def huber_threshold(scheduler, timesteps: torch.Tensor, s: LossSettings) -> torch.Tensor:
    """Per-sample Huber c, shaped (batch, 1, 1, 1), by sd-scripts' schedules (constant, exponential, snr)."""
    c = torch.full(timesteps.shape, s.huber_c, dtype=torch.float32, device=timesteps.device)
    if s.huber_schedule == "exponential":
        alpha = -math.log(s.huber_c) / scheduler.config.num_train_timesteps
        c = torch.exp(-alpha * timesteps.float())
    elif s.huber_schedule == "snr":
        alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        c = (1 - s.huber_c) / (1 + sigmas) ** 2 + s.huber_c
    return c[:, None, None, None]


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, s: LossSettings, huber_c: torch.Tensor | None = None) -> torch.Tensor:
    pred, target = pred.float(), target.float()
    if s.loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    c = huber_c if huber_c is not None else torch.tensor(s.huber_c, device=pred.device)
    scale = 2 * c if s.loss_type == "huber" else 2.0
    return scale * (torch.sqrt((pred - target) ** 2 + c**2) - c)


def sample_weights(scheduler, timesteps: torch.Tensor, is_reg: torch.Tensor, s: LossSettings, prior_loss_weight: float = 1.0) -> torch.Tensor:
    """Per-sample weights: prior_loss_weight (dataset.prior_loss_weight) for regularisation images, min-SNR
    (https://arxiv.org/abs/2303.09556)."""
    weights = torch.ones(timesteps.shape[0], device=timesteps.device)
    weights[is_reg.to(timesteps.device)] = prior_loss_weight
    if s.min_snr_gamma:
        snr = compute_snr(scheduler, timesteps)
        clipped = torch.clamp(snr, max=s.min_snr_gamma)
        if scheduler.config.prediction_type == "v_prediction":
            weights = weights * clipped / (snr + 1)
        else:
            weights = weights * clipped / snr
    return weights


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, s: LossSettings, huber_c: torch.Tensor | None = None,
                   masks: torch.Tensor | None = None) -> torch.Tensor:
    """`masks` (B, H, W) in [0, 1]: masked_loss / alpha_mask, applied before the per-sample mean as in sd-scripts."""
    loss = elementwise_loss(pred, target, s, huber_c)
    if masks is not None:
        loss = apply_masked_loss(loss, masks)
    per_sample = loss.mean(dim=(1, 2, 3))
    return (per_sample * weights.to(per_sample.device)).mean()
