"""Kohya GUI config JSON <-> our schema.

A Kohya GUI config ("Load/Save config" in kohya_ss) is a flat JSON object of GUI fields; presets list only the
keys they change. Values arrive with loose types, so the import (docs/kohya-compat.md section 3):

- coerces numeric strings ("0.0001", "1234"), integral floats for ints (64.0), "true"/"false" for booleans;
- treats "" and null as "use our default";
- migrates old keys (use_8bit_adam, lora_network_weights, LoRA_type "LoCon", xformers true/false, mem_eff_attn,
  max_train_epochs, noise_offset_type) and says so;
- rejects what cannot be parsed or is out of range, naming the Kohya key (never a silent 0);
- lists every key it did not use: `unsupported` when the file asks for something we cannot honour (LoHa, wandb,
  raw additional_parameters, ...), `ignored` when the key has no effect at its value (GUI-only fields, disabled
  features, other model families such as sdxl_*, flux, t5xxl_*, sd3_*).

Every key of the file ends up either imported (possibly coerced) or named in the report. The export writes the
Kohya conventions back: flat, keys sorted, indent 2, numbers as numbers, LoRA_type and xformers as Kohya names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, get_args

from pydantic import ValidationError

from loratrainer.config import (
    GROUPS,
    ConfigError,
    FieldSpec,
    TrainingConfig,
    field_specs,
    get_value,
)
from loratrainer.messages import Msg, define

_SPECS: dict[str, FieldSpec] = {s.name: s for s in field_specs()}

# Our settings Kohya spells differently (handled by migrations) or does not have at all.
_RENAMED = {"lora_type": "LoRA_type", "attention": "xformers"}
OURS_ONLY = frozenset(
    {"undersized_images", "alpha_background", "existing_output", "save_diffusers_format", "sample_at_first", "metadata_trigger_phrase"}
)
# Leaf names that are read straight from a Kohya key of the same name.
DIRECT_KEYS = frozenset(set(_SPECS) - set(_RENAMED))

_LORA_TYPES = {"Standard": "Standard", "LoCon": "LoCon", "Kohya LoCon": "LoCon", "LyCORIS/LoCon": "LoCon"}
_OTHER_FAMILY_PREFIXES = ("sdxl", "flux", "t5xxl", "sd3", "clip_l", "clip_g", "apply_t5", "guidance", "split_mode", "blocks_to_swap")
# FLUX.1 / SD3 options a recent Kohya GUI saves in every file, whatever the model; their defaults are not inert.
_OTHER_FAMILY_KEYS = frozenset(
    {
        "ae", "discrete_flow_shift", "model_prediction_type", "timestep_sampling", "weighting_scheme", "logit_mean",
        "logit_std", "mode_scale", "train_blocks", "train_double_block_indices", "train_single_block_indices",
        "single_dim", "double_dim", "single_mod_dim", "double_mod_dim", "img_attn_dim", "img_mlp_dim", "img_mod_dim",
        "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim", "in_dims", "split_qkv", "train_t5xxl", "enable_all_linear",
        "cpu_offload_checkpointing", "mem_eff_save", "single_blocks_to_swap", "double_blocks_to_swap",
    }
)
# Kohya keys whose Kohya default is not false/""/0 but which have no effect at that value.
_INERT_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "dynamo_backend": ("no",),
    "dynamo_mode": ("default",),
    "max_timestep": (1000,),
    "factor": (-1,),
    "unit": (1,),
    "LyCORIS_preset": ("full", "attn-mlp"),
    "train_on_input": (True,),
    "log_with": ("tensorboard",),
    "model_list": None,  # any value: the GUI's model dropdown, the path itself is pretrained_model_name_or_path
    "save_as_bool": None,
    "huggingface_repo_visibility": None,
    "stop_text_encoder_training": (0,),
}
# Keys that could carry secrets: never echoed into a report.
_SECRET_KEYS = frozenset({"huggingface_token", "wandb_api_key"})
_MAX_STEPS_NOTE = "max_train_steps (0 = use epochs; the Kohya GUI's on-screen default is 1600)"


define({
    "kohya.read_as_kohya": "Read {source} as a Kohya GUI config.",
    "kohya.read_as_ours": "Read {source} as a loratrainer config.",
    "kohya.section.unsupported": "NOT SUPPORTED (imported differently or left out; check these)",
    "kohya.section.migrated": "Migrated",
    "kohya.section.coerced": "Coerced",
    "kohya.section.defaulted": "Empty or null, our default used",
    "kohya.section.ignored": "Ignored (no effect)",
    "kohya.missing": "Not in the file, our defaults used: {keys}",
    "kohya.max_steps_default": _MAX_STEPS_NOTE,
    "kohya.hidden": "(hidden)",
    "kohya.empty_rate": "'' -> empty: the learning rate is used, as in Kohya",
    "kohya.lycoris_as_locon": "{kind} -> lora_type 'LoCon' (LyCORIS-specific options are not used)",
    "kohya.lora_type_unsupported": "{kind} is not supported; imported as Standard LoRA",
    "kohya.adam8bit_ignored": "{flag} ignored: optimizer {optimizer} is set",
    "kohya.old_weights_name": "old name of network_weights; empty or superseded",
    "kohya.max_epochs": "{value} -> epoch {epochs} (it overrides epoch in Kohya)",
    "kohya.max_epochs_unset": "{value}: not set, epoch is used",
    "kohya.model_format": "{value} is not supported; the LoRA is saved as safetensors",
    "kohya.folder_name_captions": "'.none-use-foldername' kept: no caption files, so each image's caption is its folder name (as in Kohya)",
    "kohya.wandb": "{value}: Weights & Biases logging is not supported; runs log to TensorBoard",
    "kohya.mem_eff_attn": "true -> attention 'sdpa' (memory-efficient attention)",
    "kohya.noise_offset_unused": "{value} -> 0: noise_offset_type is Multires, so Kohya does not use it",
    "kohya.multires_unused": "{value} -> 0: noise_offset_type is Original, so Kohya does not use it",
    "kohya.noise_type_unknown": "{value} is unknown; noise settings imported as written",
    "kohya.noise_type_applied": "{value} (applied to the noise settings)",
    "kohya.sd15_only": "{value}: only Stable Diffusion 1.5 is supported; imported as SD1.5",
    "kohya.other_family": "{value}: for another model family",
    "kohya.no_effect": "{value}: no effect at this value",
    "kohya.left_out": "{value} is not supported and was left out",
    "kohya.export_rate": "empty -> {value} (the learning rate)",
    "kohya.not_exported": "{value}: Kohya has no such setting; not exported",
    "kohya.export_noise": (
        "{value}: Kohya uses either the noise offset or multires noise; exported as Multires, so Kohya will not apply the noise offset"
    ),
})


@dataclass(frozen=True)
class ReportItem:
    key: str
    message: str  # English
    msg: Msg | None = field(default=None, compare=False, hash=False)  # the same, coded, for the GUI's languages

    @classmethod
    def of(cls, key: str, code: str, **params: Any) -> "ReportItem":
        msg = Msg.of(code, **params)
        return cls(key, str(msg), msg)

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"

    def render(self, say: Callable[[Msg], str] = str) -> str:
        return f"{self.key}: {say(self.msg) if self.msg is not None else self.message}"


@dataclass
class ImportReport:
    """What a conversion did with each key that was not taken over unchanged."""

    source: str = ""
    format: str = "loratrainer"  # "loratrainer" | "kohya"
    coerced: list[ReportItem] = field(default_factory=list)
    migrated: list[ReportItem] = field(default_factory=list)
    defaulted: list[ReportItem] = field(default_factory=list)
    unsupported: list[ReportItem] = field(default_factory=list)
    ignored: list[ReportItem] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # our settings the file did not mention: they take our defaults

    def keys(self, kind: str) -> list[str]:
        return [item.key for item in getattr(self, kind)]

    def mentions(self, key: str) -> bool:
        return any(item.key == key for kind in ("coerced", "migrated", "defaulted", "unsupported", "ignored") for item in getattr(self, kind))

    def lines(self, say: Callable[[Msg], str] = str) -> list[str]:
        """Human-readable report, loud items first; `say` renders each coded message (the GUI: in its language)."""
        out = []
        if self.source:
            out.append(say(Msg.of("kohya.read_as_kohya" if self.format == "kohya" else "kohya.read_as_ours", source=self.source)))
        for kind in ("unsupported", "migrated", "coerced", "defaulted", "ignored"):
            items = getattr(self, kind)
            if items:
                out.append(say(Msg.of(f"kohya.section.{kind}")) + ":")
                out.extend(f"  {item.render(say)}" for item in items)
        if self.missing:
            keys = [say(Msg.of("kohya.max_steps_default")) if k == _MAX_STEPS_NOTE else k for k in self.missing]
            out.append(say(Msg.of("kohya.missing", keys=", ".join(keys))))
        return out


# -- import -----------------------------------------------------------------------------------------------------


def import_kohya(data: dict[str, Any], source: str = "Kohya config") -> tuple[TrainingConfig, ImportReport]:
    """A Kohya GUI config dict -> our config and a report. Unusable values raise ConfigError naming the keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object of settings")
    report = ImportReport(source=source, format="kohya")
    raw = dict(data)
    values: dict[str, Any] = {}  # leaf -> raw value, before coercion
    origin: dict[str, str] = {}  # leaf -> the Kohya key it came from, for error messages
    try:
        _migrate(raw, values, origin, report)
    except ValueError as exc:  # a migrated key's value cannot be used
        raise ConfigError(f"{source}: {exc}") from None

    for key, value in raw.items():
        if key in DIRECT_KEYS:
            values[key], origin[key] = value, key
        else:
            _classify_unused(key, value, report)
    resolved = _coerce_all(values, origin, report, source)

    kohya_names = sorted(_RENAMED.get(n, n) for n in _SPECS if n not in values and n not in OURS_ONLY)
    report.missing = [k for k in kohya_names if not report.mentions(k)]
    if "max_train_steps" in report.missing:
        report.missing[report.missing.index("max_train_steps")] = _MAX_STEPS_NOTE
    return _validate(resolved, origin, source), report


def _coerce_all(values: dict[str, Any], origin: dict[str, str], report: ImportReport, source: str) -> dict[str, Any]:
    """{leaf: loose value} -> {path: typed value}; "" and null drop out (= our default); all bad values at once."""
    resolved: dict[str, Any] = {}
    errors: list[str] = []
    for leaf, value in values.items():
        key, spec = origin[leaf], _SPECS[leaf]
        if isinstance(value, str) and not value.strip() and type(None) in get_args(spec.annotation):
            # unet_lr / text_encoder_lr "": Kohya passes no flag, so sd-scripts uses learning_rate; ours says so by None.
            report.defaulted.append(ReportItem.of(key, "kohya.empty_rate"))
            resolved[spec.path] = None
            continue
        if value is None or (isinstance(value, str) and not value.strip() and (spec.kind != "text" or spec.default)):
            if spec.default not in ("", None):
                report.defaulted.append(ReportItem(key, f"{value!r} -> {spec.default!r}"))
            continue
        try:
            coerced = coerce(value, spec)
        except ValueError as exc:
            errors.append(f"{key}: {exc} (got {value!r})")
            continue
        widened = isinstance(value, int) and not isinstance(value, bool) and isinstance(coerced, float)  # 1 -> 1.0: not news
        if type(coerced) is not type(value) and not widened:
            report.coerced.append(ReportItem(key, f"{value!r} -> {coerced!r}"))
        resolved[spec.path] = coerced
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))
    return resolved


def coerce(value: Any, spec: FieldSpec) -> Any:
    """A loose Kohya value -> the Python type of our field; ValueError says what is wrong."""
    kind = spec.kind
    if kind == "choice":
        sample = spec.choices[0] if spec.choices else ""
        kind = "bool" if isinstance(sample, bool) else "int" if isinstance(sample, int) else "text"
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            return value.strip().lower() == "true"
        raise ValueError("expected true or false")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("expected a number")
        try:
            number = float(value.strip()) if isinstance(value, str) else value
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        if kind == "float":
            return float(number) if isinstance(value, str) else value
        if float(number) != int(number):
            raise ValueError("expected a whole number")
        return int(number)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("expected text")
    return value if isinstance(value, str) else (str(int(value)) if float(value).is_integer() else str(value))


def _validate(resolved: dict[str, Any], origin: dict[str, str], source: str) -> TrainingConfig:
    data: dict[str, dict[str, Any]] = {}
    for path, value in resolved.items():
        group, name = path.split(".")
        data.setdefault(group, {})[name] = value
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            key = origin.get(loc[-1], ".".join(loc)) if len(loc) == 2 else "config"
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if len(loc) == 2 else ""
            messages.append(f"{key}: {msg}{got}")
        raise ConfigError(f"{source}: " + "; ".join(messages)) from None


def _migrate(raw: dict[str, Any], values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> None:
    """Kohya keys whose name or meaning differs from ours; consumed keys are removed from `raw`."""
    _lora_type(raw, values, origin, report)
    attention = _attention(raw, report)
    if attention is not None:
        values["attention"], origin["attention"] = attention, "xformers"
    _old_names(raw, values, origin, report)
    _noise_offset_type(raw, report)
    _values_we_replace(raw, report)


def _lora_type(raw: dict[str, Any], values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> None:
    if "LoRA_type" in raw:
        kind = raw.pop("LoRA_type")
        if kind in (None, ""):
            report.defaulted.append(ReportItem("LoRA_type", f"{kind!r} -> 'Standard'"))
        elif kind in _LORA_TYPES:
            values["lora_type"], origin["lora_type"] = _LORA_TYPES[kind], "LoRA_type"
            if kind not in ("Standard", "LoCon"):
                if kind.startswith("LyCORIS"):
                    report.migrated.append(ReportItem.of("LoRA_type", "kohya.lycoris_as_locon", kind=repr(kind)))
                else:
                    report.migrated.append(ReportItem("LoRA_type", f"{kind!r} -> lora_type 'LoCon'"))
        else:
            report.unsupported.append(ReportItem.of("LoRA_type", "kohya.lora_type_unsupported", kind=repr(kind)))


def _old_names(raw: dict[str, Any], values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> None:
    """use_8bit_adam, lora_network_weights and max_train_epochs: older or overlapping ways to say our settings."""
    if "use_8bit_adam" in raw:
        flag = raw.pop("use_8bit_adam")
        if raw.get("optimizer") in (None, ""):
            raw.pop("optimizer", None)
            optimizer = "AdamW8bit" if _truthy(flag) else "AdamW"
            values["optimizer"], origin["optimizer"] = optimizer, "use_8bit_adam"
            report.migrated.append(ReportItem("use_8bit_adam", f"{flag!r} -> optimizer {optimizer!r}"))
        else:
            report.migrated.append(ReportItem.of("use_8bit_adam", "kohya.adam8bit_ignored", flag=repr(flag), optimizer=repr(raw["optimizer"])))

    if "lora_network_weights" in raw:
        old = raw.pop("lora_network_weights")
        if old not in (None, "") and raw.get("network_weights") in (None, ""):
            raw["network_weights"] = old
            report.migrated.append(ReportItem("lora_network_weights", f"-> network_weights {old!r}"))
        else:
            report.ignored.append(ReportItem.of("lora_network_weights", "kohya.old_weights_name"))

    if "max_train_epochs" in raw:
        epochs = raw.pop("max_train_epochs")
        try:
            epochs_n = coerce(epochs, _SPECS["epoch"]) if epochs not in (None, "") else 0
        except ValueError as exc:
            raise ValueError(f"max_train_epochs: {exc} (got {epochs!r})") from None
        if epochs_n > 0:
            raw["epoch"] = epochs_n
            report.migrated.append(ReportItem.of("max_train_epochs", "kohya.max_epochs", value=repr(epochs), epochs=epochs_n))
        else:
            report.ignored.append(ReportItem.of("max_train_epochs", "kohya.max_epochs_unset", value=repr(epochs)))


def _values_we_replace(raw: dict[str, Any], report: ImportReport) -> None:
    """Values of known keys that we honour differently (or not at all), said out loud."""
    fmt = raw.get("save_model_as")
    if fmt not in (None, "", "safetensors"):
        raw.pop("save_model_as")
        report.unsupported.append(ReportItem.of("save_model_as", "kohya.model_format", value=repr(fmt)))
    if raw.get("caption_extension") == ".none-use-foldername":
        report.migrated.append(ReportItem.of("caption_extension", "kohya.folder_name_captions"))

    if _truthy(raw.get("use_wandb")) or raw.get("log_with") in ("wandb", "all"):
        key = "use_wandb" if _truthy(raw.get("use_wandb")) else "log_with"
        report.unsupported.append(ReportItem.of(key, "kohya.wandb", value=repr(raw.pop(key))))


def _attention(raw: dict[str, Any], report: ImportReport) -> str | None:
    xformers = raw.pop("xformers", None)
    mem_eff = raw.pop("mem_eff_attn", None)
    result = None
    if isinstance(xformers, bool) or (isinstance(xformers, str) and xformers.lower() in {"true", "false"}):
        result = "xformers" if _truthy(xformers) else "none"
        report.migrated.append(ReportItem("xformers", f"{xformers!r} -> attention {result!r}"))
    elif isinstance(xformers, str) and xformers.strip().lower() in {"xformers", "sdpa", "none"}:
        result = xformers.strip().lower()
    elif xformers not in (None, ""):
        raise ValueError(f"xformers: expected 'xformers', 'sdpa', 'none' or true/false (got {xformers!r})")
    if _truthy(mem_eff):
        # sd-scripts gives mem_eff_attn precedence over xformers; PyTorch's sdpa is the memory-efficient kernel now.
        result = "sdpa"
        report.migrated.append(ReportItem.of("mem_eff_attn", "kohya.mem_eff_attn"))
    elif mem_eff is not None:
        report.ignored.append(ReportItem("mem_eff_attn", f"{mem_eff!r}"))
    return result


def _noise_offset_type(raw: dict[str, Any], report: ImportReport) -> None:
    """Kohya passes either the plain noise offset (Original) or the multires noise (Multires), never both."""
    kind = raw.pop("noise_offset_type", None)
    if kind is None:
        return
    if kind == "Multires" and _number(raw.get("noise_offset")):
        report.migrated.append(ReportItem.of("noise_offset", "kohya.noise_offset_unused", value=repr(raw["noise_offset"])))
        raw["noise_offset"] = 0
    elif kind in ("Original", "") and _number(raw.get("multires_noise_iterations")):
        report.migrated.append(ReportItem.of("multires_noise_iterations", "kohya.multires_unused", value=repr(raw["multires_noise_iterations"])))
        raw["multires_noise_iterations"] = 0
    elif kind not in ("Original", "Multires", ""):
        report.unsupported.append(ReportItem.of("noise_offset_type", "kohya.noise_type_unknown", value=repr(kind)))
        return
    report.ignored.append(ReportItem.of("noise_offset_type", "kohya.noise_type_applied", value=repr(kind)))


def _classify_unused(key: str, value: Any, report: ImportReport) -> None:
    shown = Msg.of("kohya.hidden") if key in _SECRET_KEYS else repr(value)
    if key in ("v2", "sdxl") and _truthy(value):
        report.unsupported.append(ReportItem.of(key, "kohya.sd15_only", value=shown))
    elif key.startswith(_OTHER_FAMILY_PREFIXES) or key in _OTHER_FAMILY_KEYS or key in ("v2", "sdxl"):
        report.ignored.append(ReportItem.of(key, "kohya.other_family", value=shown))
    elif _inert(key, value):
        report.ignored.append(ReportItem.of(key, "kohya.no_effect", value=shown))
    else:
        report.unsupported.append(ReportItem.of(key, "kohya.left_out", value=shown))


def _inert(key: str, value: Any) -> bool:
    if key in _INERT_DEFAULTS:
        allowed = _INERT_DEFAULTS[key]
        return allowed is None or value in allowed or value in (None, "", False)
    if isinstance(value, str):
        return value.strip().lower() in {"", "false", "0", "none"}
    return value in (None, False, 0)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true") or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1)


def _number(value: Any) -> bool:
    try:
        return float(value) != 0
    except (TypeError, ValueError):
        return False


# -- export -----------------------------------------------------------------------------------------------------

_KOHYA_LORA_TYPE = {"Standard": "Standard", "LoCon": "Kohya LoCon"}
_KOHYA_INTS = frozenset({"lr_warmup"})  # a float for us, an integer percentage slider in the Kohya GUI


def export_kohya(config: TrainingConfig) -> tuple[dict[str, Any], ImportReport]:
    """Our config -> a flat Kohya GUI dict (Kohya value conventions) and a report of what Kohya cannot express."""
    report = ImportReport(format="kohya")
    defaults = TrainingConfig()
    out: dict[str, Any] = {"v2": False, "sdxl": False, "LoRA_type": _KOHYA_LORA_TYPE[config.network.lora_type]}
    out["xformers"] = config.precision.attention
    for name in sorted(DIRECT_KEYS - OURS_ONLY):
        value = get_value(config, name)
        if value is None:  # an empty per-module rate means "the learning rate", which Kohya writes out explicitly
            value = config.optimizer.learning_rate
            report.migrated.append(ReportItem.of(name, "kohya.export_rate", value=repr(value)))
        out[name] = int(value) if name in _KOHYA_INTS and float(value).is_integer() else value
    for name in sorted(OURS_ONLY):
        if get_value(config, name) != get_value(defaults, name):
            report.unsupported.append(ReportItem.of(name, "kohya.not_exported", value=repr(get_value(config, name))))
    _export_noise_type(config, out, report)
    return out, report


def _export_noise_type(config: TrainingConfig, out: dict[str, Any], report: ImportReport) -> None:
    """Kohya passes noise_offset only with noise_offset_type Original (its default), multires noise only with Multires."""
    o = config.optimizer
    out["noise_offset_type"] = "Multires" if o.multires_noise_iterations > 0 else "Original"
    if o.multires_noise_iterations > 0 and o.noise_offset > 0:
        report.unsupported.append(ReportItem.of("noise_offset", "kohya.export_noise", value=repr(o.noise_offset)))


def kohya_to_json(data: dict[str, Any]) -> str:
    """Kohya's own file layout: flat, keys sorted, indent 2."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def looks_like_kohya(data: dict[str, Any]) -> bool:
    """Our JSON has a schema_version, a preset header or group objects; a Kohya file is flat."""
    if "schema_version" in data or "preset" in data or any(isinstance(data.get(g), dict) for g in GROUPS):
        return False
    return bool(data)
