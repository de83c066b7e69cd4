"""The learning-rate schedule: diffusers' get_scheduler with warm-up as steps or a percentage."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from loratrainer.config import TrainingConfig


def build_lr_scheduler(config: TrainingConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    o = config.optimizer
    if o.lr_scheduler == "adafactor":
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=o.learning_rate)
    # "constant" has no warm-up in diffusers (config.summary() tells the user so).
    warmup = 0 if o.lr_scheduler == "constant" else min(config.warmup_steps(total_steps), total_steps)
    return get_scheduler(
        o.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        num_cycles=o.lr_scheduler_num_cycles,
        power=o.lr_scheduler_power,
    )


def current_lr(scheduler) -> float:
    """The learning rate of the first group (the UNet's when it trains)."""
    return float(scheduler.get_last_lr()[0])
