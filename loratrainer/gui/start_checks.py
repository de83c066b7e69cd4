"""What the page asks about before Start: things that would not stop a run but are probably not what the user
meant. Images the trainer would skip, a learning rate far outside what the chosen optimizer expects (a "0,0001"
typed in a locale with decimal commas arrives as 1.0), a warm-up the scheduler ignores. Each is one sentence in
the page language; the run starts only after "Start anyway"."""

from __future__ import annotations

from loratrainer.gui.i18n import Translator

# Learning rates beyond these are almost surely typos for the optimizer family (Kohya GUI presets and the
# optimizers' own documentation: Adam-type 1e-5..1e-3, Lion about 3-10x lower, Prodigy/D-Adaptation about 1.0).
ADAPTIVE = {"Prodigy", "DAdaptAdam", "DAdaptLion"}
MAX_LR = {"Lion": 1e-3, "Lion8bit": 1e-3, "PagedLion8bit": 1e-3, "SGD": 1.0, "SGDNesterov": 1.0, "SGDNesterov8bit": 1.0, "Adafactor": 1e-2}
DEFAULT_MAX_LR = 1e-2  # AdamW and its 8-bit / paged forms, and optimizers given by import path
MIN_ADAPTIVE_LR = 0.1


def learning_rate_warnings(config, t: Translator) -> list[str]:
    o = config.optimizer
    rates = [("optimizer.learning_rate", o.learning_rate)]
    if o.unet_lr is not None:
        rates.append(("optimizer.unet_lr", o.unet_lr))
    if o.text_encoder_lr is not None:
        rates.append(("optimizer.text_encoder_lr", o.text_encoder_lr))
    out = []
    for path, value in rates:
        if not value:
            continue  # 0 switches a part off: its own rule
        if o.optimizer in ADAPTIVE:
            if value < MIN_ADAPTIVE_LR:
                out.append(t("start_check.lr_low", label=t.label(path), value=f"{value:g}", optimizer=o.optimizer))
        elif value > MAX_LR.get(o.optimizer, DEFAULT_MAX_LR):
            out.append(t("start_check.lr_high", label=t.label(path), value=f"{value:g}", optimizer=o.optimizer,
                         limit=f"{MAX_LR.get(o.optimizer, DEFAULT_MAX_LR):g}"))
    return out


def start_warnings(config, report, t: Translator) -> list[str]:
    """The questions to ask before starting `config`; `report` is its dataset check (None: not checked)."""
    out = []
    if report is not None and report.skipped:
        out.append(t("start_check.skipped", count=len(report.skipped), images=report.images))
    out += learning_rate_warnings(config, t)
    o = config.optimizer
    if o.lr_scheduler == "constant" and (o.lr_warmup > 0 or o.lr_warmup_steps > 0):
        out.append(t("start_check.warmup_ignored", scheduler=t.label("optimizer.lr_scheduler"), warmup=t.label("optimizer.lr_warmup")))
    return out
