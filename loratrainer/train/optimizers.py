"""The optimizer named in the config: a table of builders, not a 960-line match.

Each entry returns (class, default keyword arguments); `optimizer_args` from the config override the defaults.
Missing optional packages raise a UserError that says what to install or what to pick instead.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from loratrainer.config import TrainingConfig, parse_optimizer_args
from loratrainer.errors import UserError
from loratrainer.train.eight_bit import refusal, unavailable_hint

OptimizerSpec = tuple[type, dict[str, Any]]


class OptimizerUnavailable(UserError):
    pass


def _import(module: str, attr: str, hint: str) -> type:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, RuntimeError) as exc:
        raise OptimizerUnavailable(f"{hint} ({type(exc).__name__}: {exc})") from None


def _bnb(attr: str, name: str, **defaults: Any) -> Callable[[], OptimizerSpec]:
    def spec() -> OptimizerSpec:
        reason = refusal(name)
        if reason:
            raise OptimizerUnavailable(reason)
        return _import("bitsandbytes.optim", attr, unavailable_hint(name)), defaults

    return spec


def _lion() -> OptimizerSpec:
    try:
        return importlib.import_module("lion_pytorch").Lion, {}
    except ImportError:
        return Lion, {}


def _adafactor() -> OptimizerSpec:
    cls = _import("transformers.optimization", "Adafactor", "Adafactor needs transformers")
    # With an explicit learning rate (Kohya's default use): no relative step, no parameter scaling.
    return cls, {"scale_parameter": False, "relative_step": False, "warmup_init": False}


def _plain(module: str, attr: str, hint: str, **defaults: Any) -> Callable[[], OptimizerSpec]:
    return lambda: (_import(module, attr, hint), defaults)


OPTIMIZERS: dict[str, Callable[[], OptimizerSpec]] = {
    "AdamW": lambda: (torch.optim.AdamW, {}),
    "AdamW8bit": _bnb("AdamW8bit", "AdamW8bit"),
    "PagedAdamW8bit": _bnb("PagedAdamW8bit", "PagedAdamW8bit"),
    "Lion8bit": _bnb("Lion8bit", "Lion8bit"),
    "PagedLion8bit": _bnb("PagedLion8bit", "PagedLion8bit"),
    "SGDNesterov8bit": _bnb("SGD8bit", "SGDNesterov8bit", momentum=0.9, nesterov=True),
    "Lion": _lion,
    "SGD": lambda: (torch.optim.SGD, {}),
    "SGDNesterov": lambda: (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "Adafactor": _adafactor,
    "Prodigy": _plain("prodigyopt", "Prodigy", "Prodigy needs the prodigyopt package: pip install prodigyopt; or use AdamW"),
    "DAdaptAdam": _plain("dadaptation", "DAdaptAdam", "DAdaptAdam needs the dadaptation package: pip install dadaptation; or use AdamW"),
    "DAdaptLion": _plain("dadaptation", "DAdaptLion", "DAdaptLion needs the dadaptation package: pip install dadaptation; or use AdamW"),
}


def optimizer_spec(name: str) -> OptimizerSpec:
    """The class and defaults for a known name or a `module.Class` path; raises OptimizerUnavailable."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]()
    from loratrainer.train.input_checks import optimizer_refusal

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
