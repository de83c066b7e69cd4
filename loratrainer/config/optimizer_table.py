"""The optimizers we know by name, in one table without torch: the schema's choices, the notes before a run,
the 8-bit refusal before launch and the trainer's builder all read it.

An entry says where the class lives and its default keyword arguments (`optimizer_args` override them), whether
it finds its own step size (then a learning rate near 1.0 is expected), and for the bitsandbytes 8-bit ones what
to use instead without a CUDA GPU. Names are the Kohya GUI's (kohya_ss kohya_gui/class_basic_training.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loratrainer.messages import Label, Msg, define

define({
    "inputs.optimizer_package": (
        "{setting}: {name} is not from a known optimizer package; only {packages} are imported (a module.Class "
        "path from elsewhere could run any code)"
    ),
    "optimizer.needs_cuda": "{name} needs bitsandbytes with a CUDA GPU; use {instead}",
    "optimizer.needs_package": "{name} needs the {package} package: pip install {package}; or use AdamW",
    "optimizer.needs_module": "{name} needs {module}",
    "optimizer.no_bitsandbytes": "{hint} (bitsandbytes is not installed)",
    "optimizer.import_failed": "{hint} ({error})",
    "optimizer.not_importable": "optimizer {name!r} could not be imported",
    "optimizer.rejected_args": "optimizer {name} rejected the optimizer_args: {detail}",
})


@dataclass(frozen=True)
class OptimizerEntry:
    module: str
    attr: str
    defaults: dict[str, Any] = field(default_factory=dict)
    adaptive: bool = False  # Prodigy, D-Adaptation: the learning rate is a multiplier, about 1.0
    instead: str | None = None  # an 8-bit bitsandbytes optimizer: what to use without a CUDA GPU
    package: str | None = None  # the pip package to install when the import fails
    # A learning rate above this is almost surely a typo for this optimizer (Kohya GUI presets and the optimizers'
    # own documentation: Adam-type 1e-5..1e-3, Lion about 3-10x lower, SGD up to about 1); asked before a run.
    max_lr: float = 1e-2

    def unavailable_hint(self, name: str) -> Msg:
        """What to do when the class cannot be imported (or, for 8-bit, cannot run here)."""
        if self.instead:
            return Msg.of("optimizer.needs_cuda", name=name, instead=self.instead)
        if self.package:
            return Msg.of("optimizer.needs_package", name=name, package=self.package)
        return Msg.of("optimizer.needs_module", name=name, module=self.module.split(".")[0])


def _eight_bit(attr: str, instead: str, max_lr: float = 1e-2, **defaults: Any) -> OptimizerEntry:
    return OptimizerEntry("bitsandbytes.optim", attr, defaults, instead=instead, max_lr=max_lr)


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "AdamW": OptimizerEntry("torch.optim", "AdamW"),
    "AdamW8bit": _eight_bit("AdamW8bit", "AdamW"),
    "PagedAdamW8bit": _eight_bit("PagedAdamW8bit", "AdamW"),
    "Lion": OptimizerEntry("lion_pytorch", "Lion", max_lr=1e-3),  # the trainer has the same update rule built in
    "Lion8bit": _eight_bit("Lion8bit", "Lion", max_lr=1e-3),
    "PagedLion8bit": _eight_bit("PagedLion8bit", "Lion", max_lr=1e-3),
    "SGD": OptimizerEntry("torch.optim", "SGD", max_lr=1.0),
    "SGDNesterov": OptimizerEntry("torch.optim", "SGD", {"momentum": 0.9, "nesterov": True}, max_lr=1.0),
    "SGDNesterov8bit": _eight_bit("SGD8bit", "SGDNesterov", max_lr=1.0, momentum=0.9, nesterov=True),
    # With an explicit learning rate (Kohya's default use): no relative step, no parameter scaling.
    "Adafactor": OptimizerEntry("transformers.optimization", "Adafactor",
                                {"scale_parameter": False, "relative_step": False, "warmup_init": False}),
    "Prodigy": OptimizerEntry("prodigyopt", "Prodigy", adaptive=True, package="prodigyopt"),
    "DAdaptAdam": OptimizerEntry("dadaptation", "DAdaptAdam", adaptive=True, package="dadaptation"),
    "DAdaptLion": OptimizerEntry("dadaptation", "DAdaptLion", adaptive=True, package="dadaptation"),
}

KNOWN_OPTIMIZERS: tuple[str, ...] = tuple(OPTIMIZERS)
ADAPTIVE: frozenset[str] = frozenset(n for n, e in OPTIMIZERS.items() if e.adaptive)
# 8-bit optimizer -> what to use instead without a CUDA GPU
EIGHT_BIT: dict[str, str] = {n: e.instead for n, e in OPTIMIZERS.items() if e.instead}
# An adaptive optimizer's learning rate is a multiplier of the step it finds, about 1.0: below this, a typo.
MIN_ADAPTIVE_LR = 0.1


def max_learning_rate(name: str) -> float:
    """The highest learning rate that is plausibly meant for optimizer `name` (a module.Class path: AdamW's)."""
    entry = OPTIMIZERS.get(name)
    return entry.max_lr if entry is not None else OptimizerEntry.max_lr


# The packages an optimizer may be imported from by `module.Class` (Kohya accepts any path; importing an
# arbitrary module from a config file is running code from a config file).
OPTIMIZER_PACKAGES = (
    "torch.optim", "bitsandbytes", "prodigyopt", "pytorch_optimizer", "transformers.optimization", "dadaptation",
    "lion_pytorch", "schedulefree", "came_pytorch", "prodigyplus", "lycoris.optimizers",
)


def optimizer_source_allowed(name: str) -> bool:
    """A known optimizer name (no dot), or `module.Class` from one of OPTIMIZER_PACKAGES."""
    if "." not in name:
        return True
    module = name.rpartition(".")[0]
    return any(module == p or module.startswith(p + ".") for p in OPTIMIZER_PACKAGES)


def optimizer_refusal(name: str) -> Msg | None:
    if optimizer_source_allowed(name):
        return None
    return Msg.of("inputs.optimizer_package", setting=Label("optimizer.optimizer"), name=name,
                  packages=", ".join(OPTIMIZER_PACKAGES))
