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
from loratrainer.messages import Msg
from loratrainer.config.optimizer_table import OPTIMIZERS
from loratrainer.machine.eight_bit import refusal

OptimizerSpec = tuple[type, dict[str, Any]]


class OptimizerUnavailable(UserError):
    pass


def _import(module: str, attr: str, hint: Msg) -> type:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, RuntimeError) as exc:
        raise OptimizerUnavailable(Msg.of("optimizer.import_failed", hint=hint, error=f"{type(exc).__name__}: {exc}")) from None


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
    from loratrainer.config.optimizer_table import optimizer_refusal

    refused = optimizer_refusal(name)  # the launcher refuses it first; a hand-made run folder ends here
    if refused is not None:
        raise OptimizerUnavailable(refused)
    module, _, attr = name.rpartition(".")
    return _import(module, attr, Msg.of("optimizer.not_importable", name=name)), {}


def build_optimizer(config: TrainingConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The configured optimizer over `param_groups`. LoRA weights in fp16/bf16 (full_fp16, full_bf16) get it
    through Fp32Master, so that whatever optimizer it is keeps its state and does its arithmetic in float32."""
    if any(p.dtype in LOW_PRECISION for g in param_groups for p in g["params"]):
        return Fp32Master(lambda groups: _build(config, groups), param_groups)
    return _build(config, param_groups)


def _build(config: TrainingConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    cls, defaults = optimizer_spec(config.optimizer.optimizer)
    kwargs = {**defaults, **parse_optimizer_args(config.optimizer.optimizer_args)}
    if config.optimizer.lr_scheduler == "adafactor":  # Adafactor finds its own step size
        kwargs.update(relative_step=True, scale_parameter=True, warmup_init=kwargs.get("warmup_init", False))
        return cls([{"params": g["params"]} for g in param_groups], lr=None, **kwargs)
    try:
        return cls(param_groups, lr=config.optimizer.learning_rate, **kwargs)
    except TypeError as exc:
        raise UserError(Msg.of("optimizer.rejected_args", name=config.optimizer.optimizer, detail=str(exc))) from None


LOW_PRECISION = (torch.float16, torch.bfloat16)


class Fp32Master(torch.optim.Optimizer):
    """The optimizer for LoRA weights kept in fp16 or bf16 (full_fp16, full_bf16): it runs the real optimizer on
    float32 master copies and writes the result back, rounded, into the model's weights.

    Why: an optimizer run on fp16 weights keeps its state in fp16 and computes in fp16. AdamW's eps (1e-8) is 0
    in fp16, and the first gradient of every lora_down weight is 0 (lora_up starts at zero), so its first update is
    0/0: the weights are NaN after step 1 at any learning rate. bitsandbytes' 8-bit optimizers and torch's fused
    AdamW avoid it by computing in float32 inside the kernel; sd-scripts' --full_fp16 only lets GradScaler unscale
    fp16 gradients (library/train_util.py patch_accelerator_for_fp16_training) and leaves the rest to the
    optimizer. Here every optimizer of the table (and any `module.Class`) gets float32 state and arithmetic, and
    an update smaller than the weight's fp16 rounding step is not lost: the master copy accumulates it.

    The model's weights stay the parameters of this optimizer, so GradScaler unscales and accelerate clips their
    gradients as before; `step` copies the gradients into the masters in float32, steps the real optimizer (whose
    hyperparameters are synced both ways: the schedule sets `lr` here, Prodigy and D-Adaptation keep their `d` in
    the group) and copies the masters back. A weight changed outside the optimizer (max-norm scaling, loading a
    state) is taken over into its master before the next step.
    """

    def __init__(self, build, param_groups: list[dict[str, Any]]):
        masters = [{**g, "params": [p.detach().float().clone().requires_grad_(True) for p in g["params"]]} for g in param_groups]
        self.inner = build(masters)
        self._written: dict[torch.Tensor, int] = {}  # master -> its weight's version counter when step wrote it
        groups = [{**_hyper(inner), "params": list(g["params"])} for g, inner in zip(param_groups, self.inner.param_groups)]
        super().__init__(groups, dict(self.inner.defaults))

    def _pairs(self):
        for outer, inner in zip(self.param_groups, self.inner.param_groups):
            yield from zip(outer["params"], inner["params"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for outer, inner in zip(self.param_groups, self.inner.param_groups):
            inner.update(_hyper(outer))
        for p, master in self._pairs():
            if self._written.get(master) != p._version:  # written in place since (max-norm scaling, a loaded state)
                _take_over_changes(p, master)
            master.grad = None if p.grad is None else p.grad.detach().float()
        self.inner.step()
        for outer, inner in zip(self.param_groups, self.inner.param_groups):
            outer.update(_hyper(inner))
        for p, master in self._pairs():
            p.copy_(master)  # rounded; above fp16's 65504 it is inf, which the loop's weight check reports
            self._written[master] = p._version  # a backward pass does not move it; an in-place write does
            master.grad = None
            self.state[p] = self.inner.state[master]  # one state, seen from either side (AdafactorSchedule reads it)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for _, master in self._pairs():
            master.grad = None

    def state_dict(self) -> dict[str, Any]:
        for outer, inner in zip(self.param_groups, self.inner.param_groups):
            inner.update(_hyper(outer))  # the schedule has set the next step's rate here since the last step
        return {"inner": self.inner.state_dict(), "masters": [m.detach().clone() for _, m in self._pairs()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "inner" not in state_dict:  # a state saved before the masters existed: the optimizer's own, on the weights
            state_dict = {"inner": state_dict, "masters": [p.detach().float() for p, _ in self._pairs()]}
        self.inner.load_state_dict(state_dict["inner"])  # torch casts the saved moments to the masters' float32
        with torch.no_grad():
            for (p, master), saved in zip(self._pairs(), state_dict["masters"]):
                master.copy_(saved)  # the weights loaded beside this state are these masters, rounded
        self._written.clear()  # compared with the weights at the next step
        for outer, inner in zip(self.param_groups, self.inner.param_groups):
            outer.update(_hyper(inner))
        for p, master in self._pairs():
            if master in self.inner.state:
                self.state[p] = self.inner.state[master]

    def _get_lr(self, group, state):  # AdafactorSchedule asks the optimizer for the rate Adafactor found itself
        return self.inner._get_lr(group, state)


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def _take_over_changes(p: torch.Tensor, master: torch.Tensor) -> None:
    """Where the low-precision weight is no longer the rounded master, it was changed outside: the weight wins
    (elsewhere the master keeps the precision the weight cannot hold)."""
    master.copy_(torch.where(master.to(p.dtype) != p, p.float(), master))


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
