"""The Kohya GUI's SDXL keys <-> our settings, read as kohya_ss kohya_gui/lora_gui.py (train_model) and
kohya_gui/class_sdxl_parameters.py use them to start sd-scripts' sdxl_train_network.py:

- `sdxl` true: train_model runs sdxl_train_network.py instead of train_network.py -> model.model_family "sdxl"
  (the launcher then refuses a model that is not SDXL). false or missing: train_network.py -> "auto" (the family
  is read from the model, which is what the Kohya GUI's checkbox stood for).
- `sdxl_no_half_vae` -> precision.no_half_vae and `sdxl_cache_text_encoder_outputs` ->
  precision.cache_text_encoder_outputs: train_model passes `no_half_vae` / `cache_text_encoder_outputs` only
  "if sdxl and ...", so with sdxl off they are kept and said to apply when the model is SDXL.
- `fp8_base` is passed for every family (train_model: "fp8_base": fp8_base): a key of the same name, no rule here.
- The Kohya GUI has one text encoder rate: train_model writes text_encoder_lr = [rate, rate] into the TOML, so
  both SDXL encoders train at it (our text_encoder_2_lr empty). sd-scripts' own `--text_encoder_lr A B`
  (additional_parameters, which override the TOML) sets the two apart: imported and exported that way.
- `zero_terminal_snr` and `cache_text_encoder_outputs_to_disk` have no Kohya GUI field (lora_gui.py passes the
  latter only for FLUX/SD3/...); they travel as sd-scripts flags in additional_parameters.
- `v_pred_like_loss` (sdxl_train_util.py) is not ours: a value other than 0 is named as left out.
"""

from __future__ import annotations

from typing import Any

from loratrainer.config.fields import get_value
from loratrainer.config.kohya_report import ImportReport, ReportItem
from loratrainer.config.schema import TrainingConfig
from loratrainer.messages import define

# our setting -> the Kohya GUI key that holds it
SDXL_RENAMED = {"model_family": "sdxl", "no_half_vae": "sdxl_no_half_vae", "cache_text_encoder_outputs": "sdxl_cache_text_encoder_outputs"}
# our settings that sd-scripts takes as a bare flag and the Kohya GUI has no field for: exported in
# additional_parameters, read back from there by the generic flag mapping
FLAG_ONLY = ("zero_terminal_snr", "cache_text_encoder_outputs_to_disk")

define({
    "kohya.sdxl_on": "true -> model family 'sdxl' (the Kohya GUI runs sdxl_train_network.py); the model must be SDXL",
    "kohya.sdxl_off": "{value} -> model family 'auto': read from the model",
    "kohya.sdxl_only_option": "{value} -> {setting} {result}: the Kohya GUI uses it only with SDXL ticked; it applies when the model is SDXL",
    "kohya.te_rates": "{flag} -> text_encoder_lr {te1}, text_encoder_2_lr {te2} (SDXL's two text encoders)",
    "kohya.export_family_auto": "'auto' -> sdxl false: tick SDXL in the Kohya GUI when the model is SDXL",
    "kohya.export_family_sd15": "'sd15' -> sdxl false",
})


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true") or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1)


def import_sdxl_keys(raw: dict[str, Any], values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> None:
    """Take `sdxl`, `sdxl_no_half_vae`, `sdxl_cache_text_encoder_outputs` out of `raw` into our settings."""
    sdxl_on = _truthy(raw.get("sdxl"))
    if "sdxl" in raw:
        value = raw.pop("sdxl")
        if sdxl_on:
            values["model_family"], origin["model_family"] = "sdxl", "sdxl"
            report.migrated.append(ReportItem.of("sdxl", "kohya.sdxl_on"))
        else:
            report.ignored.append(ReportItem.of("sdxl", "kohya.sdxl_off", value=repr(value)))
    for ours in ("no_half_vae", "cache_text_encoder_outputs"):
        key = SDXL_RENAMED[ours]
        if key not in raw:
            continue
        value = raw.pop(key)
        values[ours], origin[ours] = value, key
        if not sdxl_on and _truthy(value):
            report.migrated.append(ReportItem.of(key, "kohya.sdxl_only_option", value=repr(value), setting=ours, result="True"))


def import_te_rates_flag(args: list[str], shown: str, values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> bool:
    """`--text_encoder_lr A B` in additional_parameters: sd-scripts' two SDXL text encoder rates. True if taken."""
    if len(args) != 2:
        return False
    values["text_encoder_lr"], origin["text_encoder_lr"] = args[0], "additional_parameters"
    values["text_encoder_2_lr"], origin["text_encoder_2_lr"] = args[1], "additional_parameters"
    report.migrated.append(ReportItem.of("additional_parameters", "kohya.te_rates", flag=shown, te1=args[0], te2=args[1]))
    return True


def export_sdxl_keys(config: TrainingConfig, out: dict[str, Any], report: ImportReport) -> list[str]:
    """Write the SDXL keys into `out`; returns the sd-scripts flags for additional_parameters."""
    family = config.model.model_family
    out["sdxl"] = family == "sdxl"
    if family != "sdxl":
        report.migrated.append(ReportItem.of("model_family", f"kohya.export_family_{family}"))
    out["sdxl_no_half_vae"] = config.precision.no_half_vae
    out["sdxl_cache_text_encoder_outputs"] = config.precision.cache_text_encoder_outputs
    flags = [f"--{name}" for name in FLAG_ONLY if get_value(config, name)]
    te2 = config.optimizer.text_encoder_2_lr
    if te2 is not None and te2 != config.effective_text_encoder_lr:
        flags.append(f"--text_encoder_lr {config.effective_text_encoder_lr} {te2}")
    return flags
