"""The optimizer named in the config, built from loratrainer.config.optimizer_table (where the names, classes and
defaults are listed once) or a `module.Class` path; `optimizer_args` from the config override the defaults.
Missing optional packages raise a UserError that says what to install or what to pick instead.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from loratrainer.config import TrainingConfig, parse_optimizer_args
from loratrainer.errors import UserError
from loratrainer.config.optimizer_table import OPTIMIZERS
from loratrainer.launch.eight_bit import refusal

OptimizerSpec = tuple[type, dict[str, Any]]


class OptimizerUnavailable(UserError):
    pass


def _import(module: str, attr: str, hint: str) -> type:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, RuntimeError) as exc:
        raise OptimizerUnavailable(f"{hint} ({type(exc).__name__}: {exc})") from None


def _from_table(name: str) -> OptimizerSpec:
    entry = OPTIMIZERS[name]
    if entry.instead:  # 8-bit: refused before the import when there is no CUDA GPU or no bitsandbytes
        reason = refusal(name)
        if reason:
            raise OptimizerUnavailable(reason)
    try:
        return _import(entry.module, entry.attr, entry.unavailable_hint(name)), dict(entry.defaults)
    except OptimizerUnavailable:
        if name in BUILT_IN:  # lion-pytorch is optional: the same rule is written below
            return BUILT_IN[name], dict(entry.defaults)
        raise


def optimizer_spec(name: str) -> OptimizerSpec:
    """The class and defaults for a known name or a `module.Class` path; raises OptimizerUnavailable."""
    if name in OPTIMIZERS:
        return _from_table(name)
    from loratrainer.launch.input_checks import optimizer_refusal

    refused = optimizer_refusal(name)  # the launcher refuses it first; a hand-made run folder ends here
    if refused is not None:
        raise OptimizerUnavailable(refused)
    module, _, attr = name.rpartition(".")
    return _import(module, attr, f"optimizer {name!r} could not be imported"), {}


def build_optimizer(config: TrainingConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    cls, defaults = optimizer_spec(config.optimizer.optimizer)
    kwargs = {**defaults, **parse_optimizer_args(config.optimizer.optimizer_args)}
    if config.optimizer.lr_scheduler == "adafactor":  # Adafactor finds its own step size
        kwargs.update(relative_step=True, scale_parameter=True, warmup_init=kwargs.get("warmup_init", False))
        return cls([{"params": g["params"]} for g in param_groups], lr=None, **kwargs)
    try:
        return cls(param_groups, lr=config.optimizer.learning_rate, **kwargs)
    except TypeError as exc:
        raise UserError(f"optimizer {config.optimizer.optimizer} rejected the optimizer_args: {exc}") from None


class Lion(torch.optim.Optimizer):
    """Lion (https://arxiv.org/abs/2302.06675), used when lion-pytorch is not installed; same update rule."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                avg = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = avg.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


BUILT_IN: dict[str, type] = {"Lion": Lion}
