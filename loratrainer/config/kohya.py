"""Kohya GUI config JSON <-> our schema, read as the Kohya GUI at its current HEAD reads it.

A Kohya GUI config ("Load/Save config" in kohya_ss) is a flat JSON object of GUI fields; presets list only the
keys they change. docs/kohya-compat.md section 3 says what the Kohya GUI (kohya_ss kohya_gui/lora_gui.py,
kohya_gui/common_gui.py) and sd-scripts (train_network.py, library/train_util.py) do with each key; this module
does the same, or refuses the file in one sentence:

- refused first, naming the key that says so: another model family (sd3/flux1/... *_checkbox, v2, a Flux/Lumina/
  Anima/HunyuanImage LoRA_type; `sdxl` is ours: config/kohya_sdxl.py), not a LoRA config (DreamBooth, fine-tune, textual inversion, no settings at all), a
  LoRA_type we do not train (table LORA_TYPES: LyCORIS and other network kinds; LoCon, LoHa and LoKr are trained);
- learning rates by the Kohya GUI's rules (`_learning_rates`), argument strings split as the Kohya GUI splits
  them, additional_parameters mapped flag by flag, empty values as the Kohya GUI reads them (table EMPTY_VALUES);
- loose types coerced ("0.0001", 64.0, "true"), old keys migrated, every key either imported or named in the
  report; paths written for another OS and a bucket step sd-scripts refuses are listed as problems.

The export writes every key of the current Kohya GUI LoRA tab (kohya_gui_keys.KOHYA_LORA_TAB) with values that
make the Kohya GUI train what we would.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from loratrainer.config.fields import FieldSpec, field_specs, get_value
from loratrainer.config.files import ConfigError
from loratrainer.config.foreign_paths import foreign_paths
from loratrainer.config.kohya_gui_keys import KOHYA_LORA_TAB
from loratrainer.config.kohya_sdxl import SDXL_RENAMED, FLAG_ONLY, export_sdxl_keys, import_sdxl_keys, import_te_rates_flag
from loratrainer.config.kohya_report import _MAX_STEPS_NOTE, SECTIONS, ImportReport, ReportItem  # noqa: F401  (re-exported)
from loratrainer.config.schema import GROUPS, TrainingConfig
from loratrainer.messages import Msg, MsgError, define

_SPECS: dict[str, FieldSpec] = {s.name: s for s in field_specs()}

# accelerate launch flags the Kohya GUI has no field for: its "Extra accelerate launch arguments" box carries them
# (kohya_ss kohya_gui/class_accelerate_launch.py, placeholder "--same_network --machine_rank 4").
EXTRA_LAUNCH_FLAGS = {"machine_rank": "--machine_rank", "main_process_ip": "--main_process_ip", "rdzv_backend": "--rdzv_backend"}
_EXTRA_ARGS_KEY = "extra_accelerate_launch_args"
# Our settings Kohya spells differently (handled by migrations) or does not have at all.
_RENAMED = {"lora_type": "LoRA_type", "attention": "xformers", **{name: _EXTRA_ARGS_KEY for name in EXTRA_LAUNCH_FLAGS}, **SDXL_RENAMED}
OURS_ONLY = frozenset(
    {"undersized_images", "alpha_background", "existing_output", "save_diffusers_format", "sample_at_first", "metadata_trigger_phrase",
     "channels_last", "text_encoder_2_lr"}  # text_encoder_2_lr: sd-scripts' --text_encoder_lr A B (kohya_sdxl)
)
# Leaf names that are read straight from a Kohya key of the same name.
DIRECT_KEYS = frozenset(set(_SPECS) - set(_RENAMED))
_RATE_KEYS = ("learning_rate", "unet_lr", "text_encoder_lr")

# Kohya LoRA_type -> our lora_type, or None: a network kind we do not train (refused, named). One table, so a
# kind that becomes trainable is one changed row. Values from the LoRA_type dropdown of kohya_gui/lora_gui.py.
LORA_TYPES: dict[str, str | None] = {
    "Standard": "Standard",
    "Kohya LoCon": "LoCon",
    "LoCon": "LoCon",  # old name; the Kohya GUI's update_my_data turns it into LyCORIS/LoCon
    "LyCORIS/LoCon": "LoCon",
    "LyCORIS/LoHa": "LoHa",  # trained with peft's LoHa/LoKr, saved as lycoris.kohya saves them (docs/lycoris.md)
    "LyCORIS/LoKr": "LoKr",
    "Kohya LoHa": None,
    "Kohya LoKr": None,
    "LyCORIS/iA3": None,
    "LyCORIS/DyLoRA": None,
    "Kohya DyLoRA": None,
    "LyCORIS/GLoRA": None,
    "LyCORIS/Diag-OFT": None,
    "LyCORIS/BOFT": None,
    "LyCORIS/Native Fine-Tuning": None,
    "LoRA-FA": None,
}
# Our LoHa/LoKr settings: Kohya GUI keys of the same name, used only with a LyCORIS/LoHa or LyCORIS/LoKr type
_LYCORIS_KEYS = ("factor", "decompose_both", "use_tucker", "rank_dropout", "module_dropout")
# LyCORIS options peft's LoHa/LoKr do not have (lycoris/kohya.py reads them from network_args)
_LYCORIS_REFUSED = ("use_scalar", "train_norm", "dora_wd", "bypass_mode", "rank_dropout_scale")
# LoRA_types that exist only for another model family (kohya_gui/lora_gui.py train_model).
_FAMILY_LORA_TYPES = {"Flux1": "FLUX.1", "Flux1 OFT": "FLUX.1", "Anima": "Anima", "Lumina": "Lumina Image 2.0", "HunyuanImage-2.1": "HunyuanImage-2.1"}
# Keys that switch the Kohya GUI to another trainer script (train_model: flux_..., sd3_..., ...); `sdxl` is ours
# (kohya_sdxl), `sdxl_checkbox` is the fine-tune and DreamBooth tabs' name for it (refused as those tabs).
_FAMILY_FLAGS = (
    ("sd3_checkbox", "Stable Diffusion 3"),
    ("flux1_checkbox", "FLUX.1"),
    ("hunyuan_image_checkbox", "HunyuanImage-2.1"),
    ("anima_checkbox", "Anima"),
    ("lumina_checkbox", "Lumina Image 2.0"),
    ("v2", "Stable Diffusion 2"),
)
# Keys only other Kohya GUI tabs save (dreambooth_gui.py, finetune_gui.py, textual_inversion_gui.py).
_OTHER_TABS = (
    ("textual inversion", ("num_vectors_per_token", "token_string", "init_word")),
    ("fine-tune", ("train_text_encoder", "use_latent_files", "image_folder", "train_dir", "caption_metadata_filename", "latent_metadata_filename")),
    ("DreamBooth", ("no_token_padding", "learning_rate_te", "learning_rate_te1", "learning_rate_te2")),
)
_LORA_MARKERS = ("LoRA_type", "network_dim", "network_alpha", "unet_lr", "text_encoder_lr", "network_weights", "lora_network_weights", "conv_dim")
# Keys older Kohya GUI versions saved, beside the current LoRA tab's (a file of only these is still a Kohya file).
_OLD_KEYS = frozenset({"use_8bit_adam", "lora_network_weights", "use_wandb", "network_args", "caption_tag_dropout_rate", "no_token_padding"})

_OTHER_FAMILY_PREFIXES = ("sdxl", "flux", "t5xxl", "sd3", "clip_l", "clip_g", "apply_t5", "guidance", "split_mode", "blocks_to_swap", "anima_", "lumina_", "hunyuan_")
# FLUX.1 / SD3 options a recent Kohya GUI saves in every file, whatever the model; their defaults are not inert.
_OTHER_FAMILY_KEYS = frozenset(
    {
        "ae", "discrete_flow_shift", "model_prediction_type", "timestep_sampling", "weighting_scheme", "logit_mean",
        "logit_std", "mode_scale", "train_blocks", "train_double_block_indices", "train_single_block_indices",
        "single_dim", "double_dim", "single_mod_dim", "double_mod_dim", "img_attn_dim", "img_mlp_dim", "img_mod_dim",
        "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim", "in_dims", "split_qkv", "train_t5xxl", "enable_all_linear",
        "cpu_offload_checkpointing", "mem_eff_save", "single_blocks_to_swap", "double_blocks_to_swap", "model_type",
        "t5xxl_lr", "fp8_base", "fp8_base_unet", "sdxl_no_half_vae", "ggpo_beta", "ggpo_sigma", "train_lora_ggpo",
    }
)
# Kohya keys whose Kohya default is not false/""/0 but which have no effect at that value.
_INERT_DEFAULTS: dict[str, tuple[Any, ...] | None] = {
    "dynamo_mode": ("default",),
    "max_timestep": (1000,),
    "factor": (-1,),
    "unit": (1,),
    "LyCORIS_preset": ("full", "attn-mlp"),
    "train_on_input": (True,),
    "log_with": ("tensorboard",),
    "huber_scale": (1, 1.0),
    "model_list": None,  # any value: the GUI's model dropdown, the path itself is pretrained_model_name_or_path
    "save_as_bool": None,
    "training_preset": None,
    "huggingface_repo_visibility": None,
    "huggingface_repo_type": None,
    "save_state_to_huggingface": None,
    # the Kohya GUI ignores it ("not yet supported. Ignoring" in train_model), whatever its value
    "stop_text_encoder_training": None,
    "extra_accelerate_launch_args": ("",),
    "show_timesteps_resolution": None,  # train_model passes it only with show_timesteps on a FLUX/SD3/Anima/Lumina run
    "use_scalar": None, "use_tucker": None, "use_cp": None, "rescaled": None, "constrain": None, "bypass_mode": None,
    "dora_wd": None, "train_norm": None, "decompose_both": None, "rank_dropout_scale": None,  # LyCORIS-only options
}
# Keys that could carry secrets: never echoed into a report.
_SECRET_KEYS = frozenset({"huggingface_token", "wandb_api_key"})

_REFUSE = object()
# What an empty string ("") means per key, as the Kohya GUI at HEAD turns it into a run (docs/kohya-compat.md
# section 3, "Empty values"): update_my_data (kohya_gui/common_gui.py) makes "" of some numbers 0 (or 1, 75,
# 1.0); train_model drops every other "" from the TOML it hands sd-scripts, so sd-scripts' own default applies
# (library/train_util.py, networks/lora.py). _REFUSE: the Kohya GUI fails or trains something else than meant.
EMPTY_VALUES: dict[str, Any] = {
    # kohya_gui/class_accelerate_launch.py passes --dynamo_backend only when set: empty is accelerate's "no"
    "dynamo_backend": "no",
    # update_my_data: int("") fails -> 0
    "clip_skip": 1,  # -> 0, which train_model passes as no --clip_skip: the last layer, our 1
    "epoch": _REFUSE,  # -> 0: no steps are counted, so sd-scripts falls back to its 1600 steps
    "gradient_accumulation_steps": _REFUSE,  # -> 0: train_model divides by it
    "keep_tokens": 0,
    "lr_warmup": 0.0,
    "max_data_loader_n_workers": 0,
    "save_every_n_epochs": 0,  # -> 0: dropped from the TOML, no per-epoch files
    "seed": 0,  # -> 0: a random seed
    "lr_scheduler_num_cycles": 1,  # update_my_data: int("") fails -> 1
    "max_train_steps": 0,
    "caption_dropout_every_n_epochs": 0,
    "max_token_length": 75,
    "noise_offset": 0.0,
    "lr_scheduler_power": 1.0,
    # "" dropped from the TOML: sd-scripts' default
    "caption_extension": ".caption",
    "optimizer": "AdamW",
    "lr_scheduler": "constant",
    "sample_sampler": "ddim",
    "mixed_precision": "no",
    "save_precision": "float",
    "loss_type": "l2",
    "huber_schedule": "snr",
    "huber_c": 0.1,
    "network_dim": 4,  # networks/lora.py create_network: network_dim None -> 4
    "network_alpha": 1.0,
    "max_bucket_reso": 1024,
    "prior_loss_weight": 1.0,
    "max_grad_norm": 1.0,
    "multires_noise_discount": 0.3,
    "network_dropout": 0.0,
    "scale_weight_norms": 0.0,
    "min_snr_gamma": 0.0,
    "ip_noise_gamma": 0.0,
    "multires_noise_iterations": 0,
    "caption_dropout_rate": 0.0,
    "caption_tag_dropout_rate": 0.0,
    "sample_every_n_steps": 0,
    "sample_every_n_epochs": 0,
    "save_every_n_steps": 0,
    "save_last_n_epochs": 0,
    "save_last_n_steps": 0,
    "lr_warmup_steps": 0,
    "conv_dim": 1,  # unused by Standard; LoCon: see _empty_conv
    "conv_alpha": 1.0,
    # LyCORIS network_args (lycoris/kohya.py): float(kwargs.get(...) or 0.0) for the dropouts; factor's default -1
    "rank_dropout": 0.0,
    "module_dropout": 0.0,
    "factor": -1,
    "output_name": "last",  # sd-scripts' DEFAULT_LAST_OUTPUT_NAME
    "save_model_as": "safetensors",
    "num_cpu_threads_per_process": 2,  # class_accelerate_launch.py passes no flag: accelerate's default
    "num_processes": 1,
    "num_machines": 1,
    "main_process_port": 0,
    # bools: "" is falsy, so the flag is not passed
    **{name: False for name, spec in _SPECS.items() if spec.kind == "bool"},
    "persistent_data_loader_workers": _REFUSE,  # train_model: int("") fails
    # the Kohya GUI fails on these: int("") in train_model, no resolution, no model
    "train_batch_size": _REFUSE,
    "min_bucket_reso": _REFUSE,
    "bucket_reso_steps": _REFUSE,
    "max_resolution": _REFUSE,
    "pretrained_model_name_or_path": _REFUSE,
    # text that may be empty: empty here too
    **{name: "" for name in (
        "vae", "train_data_dir", "reg_data_dir", "dataset_config", "output_dir", "logging_dir", "network_weights", "resume", "gpu_ids",
        "sample_prompts", "optimizer_args", "metadata_title", "metadata_author", "metadata_description",
        "metadata_license", "metadata_tags", "training_comment", "conditioning_data_dir",
    )},
    # learning rates: update_my_data float("") fails -> 0.0, then the rate rules (_learning_rates)
    "learning_rate": 0.0,
    "unet_lr": 0.0,
    "text_encoder_lr": 0.0,
    # validation (only as sd-scripts flags or gui-v2 keys): "" is not passed, sd-scripts' None/0.0 = our 0 (or 1)
    "validation_split": 0.0, "validation_seed": 0, "validate_every_n_steps": 0, "validate_every_n_epochs": 1,
    "max_validation_steps": 0, "validation_data_dir": "",
}


define({  # a file that cannot be imported: what is wrong with which key
    "kohya.not_object": "{source}: expected a JSON object of settings",
    "kohya.invalid": "{source}: {errors}",
    "kohya.bad_value": "{key}: {reason} (got {value})",
    "kohya.key_reason": "{key}: {reason}",
    "kohya.errors_join": "{first}; {rest}",
    "kohya.expected.xformers": "expected 'xformers', 'sdpa', 'none' or true/false",
})


def _joined(errors: list[Msg]) -> Msg:
    """Several keys' errors as one message ("a: ...; b: ..."), each said in the page's language."""
    said = errors[-1]
    for error in reversed(errors[:-1]):
        said = Msg.of("kohya.errors_join", first=error, rest=said)
    return said


def _reason(exc: ValueError) -> Msg | str:
    return exc.msg if isinstance(exc, MsgError) else str(exc)


define({
    "kohya.lycoris_as_locon": "{kind} -> lora_type 'LoCon' (LyCORIS-specific options other than dora_wd are not used)",
    "kohya.dora_from_args": "{value} -> dora_wd True (DoRA)",
    "kohya.dora_no_effect": "{value}: the Kohya GUI trains {kind} with sd-scripts' networks.lora, which has no DoRA (only LyCORIS/LoCon passes dora_wd); trained without it",
    "kohya.dora_export_standard": "Standard with DoRA -> LyCORIS/LoCon with LyCORIS_preset 'attn-mlp' (the Kohya GUI offers DoRA only through LyCORIS; attn-mlp adapts Standard's layers); it imports back as LoCon",
    "kohya.lycoris_refused": "{value}: peft's LoHa/LoKr have no {option} option; trained without it",
    "kohya.lokr_tucker": "{value}: LoKr's Tucker form (lokr_t2) is not supported (ComfyUI cannot apply it); trained without it",
    "kohya.lycoris_dropout": "{value} -> 0: LyCORIS does not use network_dropout for LoHa/LoKr (rank_dropout and module_dropout apply)",
    "kohya.lycoris_preset": "{value}: trained on LoCon's module set (attention/MLP layers and 3x3 convolutions), as LyCORIS's attn-mlp preset plus the 3x3 convolutions",
    "kohya.adam8bit_ignored": "{flag} ignored: optimizer {optimizer} is set",
    "kohya.old_weights_name": "old name of network_weights; empty or superseded",
    "kohya.max_epochs": "{value} -> epoch {epochs} (it overrides epoch in Kohya)",
    "kohya.epoch_overridden": "{value}: not used, max_train_epochs overrides it",
    "kohya.rate_flag_override": "{value} -> 0: {flag} in additional_parameters wins (that part is not trained)",
    "kohya.max_epochs_unset": "{value}: not set, epoch is used",
    "kohya.model_format": "{value} is not supported; the LoRA is saved as safetensors",
    "kohya.folder_name_captions": "'.none-use-foldername' kept: no caption files, so each image's caption is its folder name (as in Kohya)",
    "kohya.wandb": "{value}: Weights & Biases logging is not supported; runs log to TensorBoard",
    "kohya.mem_eff_attn": "true -> attention 'sdpa' (memory-efficient attention)",
    "kohya.noise_offset_unused": "{value} -> 0: noise_offset_type is Multires, so Kohya does not use it",
    "kohya.multires_unused": "{value} -> 0: noise_offset_type is Original, so Kohya does not use it",
    "kohya.noise_type_unknown": "{value} is unknown; noise settings imported as written",
    "kohya.noise_type_applied": "{value} (applied to the noise settings)",
    "kohya.other_family": "{value}: for another model family",
    "kohya.no_effect": "{value}: no effect at this value",
    "kohya.left_out": "{value} is not supported and was left out",
    "kohya.export_rate": "empty -> {value} (the learning rate)",
    "kohya.launch_flag": "{flag} {value} -> {setting}",
    "kohya.not_exported": "{value}: Kohya has no such setting; not exported",
    "kohya.export_noise": (
        "{value}: Kohya uses either the noise offset or multires noise; exported as Multires, so Kohya will not apply the noise offset"
    ),
    # refusals: the first line of the CLI's error and the GUI's load message
    "kohya.refused.family": "{source} is a {family} config ({key} = {value}): loratrainer trains Stable Diffusion 1.5 and SDXL LoRAs only",
    "kohya.refused.other_tab": "{source} is a Kohya GUI {kind} config ({key} is set), not a LoRA config: loratrainer trains LoRAs only",
    "kohya.refused.empty": "{source} holds no settings at all (an empty JSON object), so it is not a Kohya GUI LoRA config",
    "kohya.refused.nested": "{source} is not a Kohya GUI config: {key} holds an object, and a Kohya GUI config is a flat list of settings ({looks_like})",
    "kohya.refused.caption_metadata": "this looks like a caption metadata file",
    "kohya.refused.other_json": "this looks like some other JSON file",
    "kohya.refused.no_known_key": "{source} is not a Kohya GUI config: none of its {count} keys is a Kohya GUI setting (first: {first})",
    "kohya.refused.network": "{source}: LoRA_type {value} ({name}) is not trained by loratrainer, which trains Standard LoRA and LoCon only",
    "kohya.refused.lora_type_unknown": "{source}: LoRA_type {value} is not a LoRA type the Kohya GUI knows",
    "kohya.refused.empty_value": "{source}: {key} is empty, and the Kohya GUI cannot train with it empty as meant: set a value",
    "kohya.refused.no_rate": "{source}: learning_rate is {value} and {part} falls back to it, so nothing sensible would be trained: set learning_rate",
    # learning rates
    "kohya.rate_missing": "not set in the file -> the learning rate ({value}), as sd-scripts uses it",
    "kohya.rate_empty": "{value} -> 0 (the Kohya GUI reads an empty rate as 0)",
    "kohya.rates_both_zero": "unet_lr and text_encoder_lr are both 0: both train at the learning rate ({value}), as in the Kohya GUI",
    "kohya.rate_unet_only": "{value}: the text encoder is not trained (UNet-only LoRA), as in the Kohya GUI",
    "kohya.rate_te_only": "{value}: the UNet is not trained (text-encoder-only LoRA), as in the Kohya GUI",
    # empty values, argument strings, flags
    "kohya.empty_as_kohya": "'' -> {value} (what the Kohya GUI makes of an empty value)",
    "kohya.null_default": "null -> {value} (not set; the Kohya GUI would keep its on-screen value)",
    "kohya.optimizer_missing": "not in the file -> {value} (the Kohya GUI's choice for a file without an optimizer)",
    "kohya.args_split": "{value} -> {result} (split as the Kohya GUI splits it; quotes and stray commas removed)",
    "kohya.scheduler_args": "{value}: scheduler arguments are not supported; the {scheduler} schedule runs with its standard parameters",
    "kohya.flag_mapped": "{flag} -> {setting} = {value}",
    "kohya.flag_unet_only": "{flag} -> text_encoder_lr = 0 (UNet-only LoRA)",
    "kohya.flag_te_only": "{flag} -> unet_lr = 0 (text-encoder-only LoRA)",
    "kohya.flag_left_out": "{flag} is not supported and was left out",
    "kohya.flag_no_effect": "{flag}: no effect at this value",
    "kohya.network_args_mapped": "{value}: conv_dim/conv_alpha taken over; the rest is listed separately",
    # problems: imported, but Start refuses them
    "kohya.foreign_path": "{value} is a {kind} path, written on another computer: training will not start until it is changed",
    "kohya.alpha_zero": "0 -> 1.0: the Kohya GUI leaves a 0 out of the TOML it gives sd-scripts, which then uses its default alpha 1 (in loratrainer 0 means alpha = rank)",
    "kohya.alpha_zero_export": "0 (alpha = rank) -> {value}: the Kohya GUI would leave a 0 out, and sd-scripts would train at alpha 1",
    "kohya.reso_steps": "{value} with buckets on: sd-scripts refuses it for {family} (it must be a multiple of {step}), and so does Start",
})


class KohyaRefused(ConfigError):
    """A Kohya file we must not import: the message is one sentence naming the file and the key that says why."""


# -- import -----------------------------------------------------------------------------------------------------


def import_kohya(data: dict[str, Any], source: str = "Kohya config",
                 overrides: dict[str, Any] | None = None) -> tuple[TrainingConfig, ImportReport]:
    """A Kohya GUI config dict -> our config and a report. Unusable files or values raise ConfigError naming the keys.
    `overrides` ({setting path: value}, the CLI's --set) win over the file and are applied before validating."""
    if not isinstance(data, dict):
        raise ConfigError(Msg.of("kohya.not_object", source=source))
    refuse_unless_sd15_lora(data, source)
    report = ImportReport(source=source, format="kohya")
    raw = dict(data)
    values: dict[str, Any] = {}  # leaf -> raw value, before coercion
    origin: dict[str, str] = {}  # leaf -> the Kohya key it came from, for error messages
    try:
        flags = _migrate(raw, values, origin, report)
    except ValueError as exc:  # a migrated key's value cannot be used
        raise ConfigError(Msg.of("kohya.invalid", source=source, errors=_reason(exc))) from None

    for key, value in raw.items():
        if key in DIRECT_KEYS:
            values.setdefault(key, value)  # a value from additional_parameters (already in) wins, as on sd-scripts' command line
            origin.setdefault(key, key)
        else:
            _classify_unused(key, value, report)
    rates = _learning_rates(data, values, flags, report, source)
    resolved = _coerce_all(values, origin, report, source)
    resolved.update(rates)

    # the per-part rates are reported by _learning_rates (missing = learning_rate), not as "our default"
    kohya_names = sorted({
        _RENAMED.get(n, n) for n in _SPECS
        if n not in values and _SPECS[n].path not in resolved and n not in OURS_ONLY and n not in ("unet_lr", "text_encoder_lr")
    })  # a set: three settings come from the one extra_accelerate_launch_args key
    report.missing = [k for k in kohya_names if not report.mentions(k)]
    if "max_train_steps" in report.missing:
        report.missing[report.missing.index("max_train_steps")] = _MAX_STEPS_NOTE
    resolved.update(overrides or {})
    config = _validate(resolved, origin, source)
    _problems(config, origin, report)
    return config, report


def refuse_unless_sd15_lora(data: dict[str, Any], source: str) -> None:
    """Raise KohyaRefused when the file is no config, is for another model family, another Kohya GUI tab, or a
    LoRA_type we do not train. Checked in that order, so the sentence names the most basic reason."""
    if not data:
        raise KohyaRefused(Msg.of("kohya.refused.empty", source=source))
    nested = next((k for k, v in data.items() if isinstance(v, (dict, list))), None)
    if nested is not None:
        value = data[nested]
        caption_like = isinstance(value, dict) and bool({"caption", "tags", "train_resolution"} & set(value))
        looks = Msg.of("kohya.refused.caption_metadata" if caption_like else "kohya.refused.other_json")
        raise KohyaRefused(Msg.of("kohya.refused.nested", source=source, key=repr(nested), looks_like=looks))
    known = set(KOHYA_LORA_TAB) | DIRECT_KEYS | _OLD_KEYS | {k for _, keys in _OTHER_TABS for k in keys}
    if not set(data) & known:
        raise KohyaRefused(Msg.of("kohya.refused.no_known_key", source=source, count=len(data), first=repr(next(iter(data)))))
    for key, family in _FAMILY_FLAGS:
        if _truthy(data.get(key)):
            raise KohyaRefused(Msg.of("kohya.refused.family", source=source, family=family, key=key, value=json.dumps(data[key])))
    kind = data.get("LoRA_type")
    if kind in _FAMILY_LORA_TYPES:
        raise KohyaRefused(Msg.of("kohya.refused.family", source=source, family=_FAMILY_LORA_TYPES[kind], key="LoRA_type", value=json.dumps(kind)))
    has_lora_marker = any(k in data for k in _LORA_MARKERS)
    for tab, keys in _OTHER_TABS:
        marker = next((k for k in keys if k in data), None)
        if marker and (tab == "textual inversion" or not has_lora_marker):
            raise KohyaRefused(Msg.of("kohya.refused.other_tab", source=source, kind=tab, key=marker))
    if _truthy(data.get("sdxl_checkbox")) and not has_lora_marker:
        raise KohyaRefused(Msg.of("kohya.refused.other_tab", source=source, kind="fine-tune or DreamBooth", key="sdxl_checkbox"))
    if kind not in (None, "") and kind not in LORA_TYPES:
        raise KohyaRefused(Msg.of("kohya.refused.lora_type_unknown", source=source, value=json.dumps(kind)))
    if kind in LORA_TYPES and LORA_TYPES[kind] is None:
        name = kind.split("/")[-1].removeprefix("Kohya ")
        raise KohyaRefused(Msg.of("kohya.refused.network", source=source, value=json.dumps(kind), name=name))


def _learning_rates(data: dict[str, Any], values: dict[str, Any], flags: set[str], report: ImportReport, source: str) -> dict[str, Any]:
    """learning_rate, unet_lr, text_encoder_lr by the Kohya GUI's rules (kohya_ss kohya_gui/lora_gui.py train_model,
    resolve_network_train_flags; sd-scripts train_network.py):

    - "" is 0 (update_my_data's float("") fallback); a key that is missing or null leaves that part at
      learning_rate (sd-scripts without --unet_lr/--text_encoder_lr);
    - text_encoder_lr 0 with unet_lr set: UNet-only; unet_lr 0 with text_encoder_lr set: text-encoder-only;
    - both 0: both train at learning_rate (neither flag is passed);
    - a part that falls back to a learning_rate of 0 is refused (the Kohya GUI drops a 0 from its TOML, so
      sd-scripts would use its own 2e-6; with all three 0 the Kohya GUI refuses to start).
    Our schema says "learning_rate" by None, "not trained" by 0.
    """
    rates: dict[str, float | None] = {}
    errors = []
    found = {key: values.pop(key) for key in _RATE_KEYS if key in values}  # file or additional_parameters
    for key in _RATE_KEYS:
        value = found.get(key)
        if value is None:  # missing or null: learning_rate keeps our default (the Kohya GUI's too), a part uses it
            continue
        if isinstance(value, str) and not value.strip():
            rates[key] = 0.0  # update_my_data: float("") fails -> 0.0
            report.defaulted.append(ReportItem.of(key, "kohya.rate_empty", value="''"))
            continue
        try:
            rates[key] = _SPECS[key].coerce(value)
        except ValueError as exc:
            errors.append(Msg.of("kohya.bad_value", key=key, reason=_reason(exc), value=repr(value)))
            continue
        if isinstance(value, str):
            report.coerced.append(ReportItem(key, f"{value!r} -> {rates[key]!r}"))
    if errors:
        raise ConfigError(Msg.of("kohya.invalid", source=source, errors=_joined(errors)))
    lr = rates.get("learning_rate", _SPECS["learning_rate"].default)
    for key in ("unet_lr", "text_encoder_lr"):
        if key not in rates:
            rates[key] = None
            report.defaulted.append(ReportItem.of(key, "kohya.rate_missing", value=repr(lr)))
    unet, te = rates.get("unet_lr"), rates.get("text_encoder_lr")
    if "network_train_unet_only" in flags:
        if te != 0 and "text_encoder_lr" in data:
            report.migrated.append(ReportItem.of("text_encoder_lr", "kohya.rate_flag_override", value=repr(data["text_encoder_lr"]), flag="--network_train_unet_only"))
        te, unet = 0.0, (None if unet == 0 else unet)
    elif "network_train_text_encoder_only" in flags:
        if unet != 0 and "unet_lr" in data:
            report.migrated.append(ReportItem.of("unet_lr", "kohya.rate_flag_override", value=repr(data["unet_lr"]), flag="--network_train_text_encoder_only"))
        unet, te = 0.0, (None if te == 0 else te)
    elif unet == 0 and te == 0:
        unet = te = None
        for key in ("unet_lr", "text_encoder_lr"):
            report.migrated.append(ReportItem.of(key, "kohya.rates_both_zero", value=repr(lr)))
    elif te == 0:
        report.migrated.append(ReportItem.of("text_encoder_lr", "kohya.rate_unet_only", value=repr(data.get("text_encoder_lr"))))
    elif unet == 0:
        report.migrated.append(ReportItem.of("unet_lr", "kohya.rate_te_only", value=repr(data.get("unet_lr"))))
    for part, rate in (("unet_lr", unet), ("text_encoder_lr", te)):
        if rate is None and not lr:
            raise KohyaRefused(Msg.of("kohya.refused.no_rate", source=source, value=repr(data.get("learning_rate", lr)), part=part))
    out = {"optimizer.unet_lr": unet, "optimizer.text_encoder_lr": te}
    if "learning_rate" in rates:
        out["optimizer.learning_rate"] = rates["learning_rate"]
    return out


def _coerce_all(values: dict[str, Any], origin: dict[str, str], report: ImportReport, source: str) -> dict[str, Any]:
    """{leaf: loose value} -> {path: typed value}; "" as the Kohya GUI reads it, null = not set; all bad values at once."""
    resolved: dict[str, Any] = {}
    errors: list[Msg] = []
    locon = values.get("lora_type") == "LoCon"
    for leaf, value in values.items():
        key, spec = origin[leaf], _SPECS[leaf]
        if value is None:
            if spec.default not in ("", None):
                report.defaulted.append(ReportItem.of(key, "kohya.null_default", value=repr(spec.default)))
            continue
        if isinstance(value, str) and not value.strip() and spec.kind != "text" or value == "":
            replacement = EMPTY_VALUES.get(leaf, spec.default)
            if replacement is _REFUSE or (locon and leaf in ("conv_dim", "conv_alpha")):
                # Kohya LoCon passes conv_dim="" to networks/lora.py, whose int("") fails
                raise KohyaRefused(Msg.of("kohya.refused.empty_value", source=source, key=key))
            if replacement != "":
                report.defaulted.append(ReportItem.of(key, "kohya.empty_as_kohya", value=repr(replacement)))
            resolved[spec.path] = replacement
            continue
        try:
            coerced = spec.coerce(value)
        except ValueError as exc:
            errors.append(Msg.of("kohya.bad_value", key=key, reason=_reason(exc), value=repr(value)))
            continue
        widened = isinstance(value, int) and not isinstance(value, bool) and isinstance(coerced, float)  # 1 -> 1.0: not news
        if type(coerced) is not type(value) and not widened:
            report.coerced.append(ReportItem(key, f"{value!r} -> {coerced!r}"))
        resolved[spec.path] = coerced
    if errors:
        raise ConfigError(Msg.of("kohya.invalid", source=source, errors=_joined(errors)))
    return resolved


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
            key = origin.get(loc[-1], loc[-1] if loc[-1] in _RATE_KEYS else ".".join(loc)) if len(loc) == 2 else "config"
            # our validators' coded reason; pydantic's own (a range, a type) is its English, kept as the detail
            msg = getattr((err.get("ctx") or {}).get("error"), "msg", None) or err["msg"].removeprefix("Value error, ")
            got = Msg.of("kohya.bad_value", key=key, reason=msg, value=repr(err["input"])) if len(loc) == 2 else None
            messages.append(got or Msg.of("kohya.key_reason", key=key, reason=msg))
        raise ConfigError(Msg.of("kohya.invalid", source=source, errors=_joined(messages))) from None


def _problems(config: TrainingConfig, origin: dict[str, str], report: ImportReport) -> None:
    """What imports but cannot train here: Start refuses it (launch.path_checks, data.check), the report says so now."""
    paths = {spec.path: get_value(config, spec.path) for spec in field_specs() if spec.kind == "text"}
    for path, kind in foreign_paths(paths).items():
        leaf = path.split(".")[1]
        report.problems.append(ReportItem.of(origin.get(leaf, leaf), "kohya.foreign_path", value=repr(paths[path]), kind=kind))
    b = config.buckets
    # train_network.py: verify_bucket_reso_steps(64); sdxl_train_network.py: verify_bucket_reso_steps(32)
    step, family = (32, "SDXL") if config.model.model_family == "sdxl" else (64, "SD1.5")
    if b.enable_bucket and b.bucket_reso_steps % step:
        report.problems.append(ReportItem.of("bucket_reso_steps", "kohya.reso_steps", value=b.bucket_reso_steps, family=family, step=step))


def _migrate(raw: dict[str, Any], values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> set[str]:
    """Kohya keys whose name or meaning differs from ours; consumed keys are removed from `raw`. Returns the
    train-mode flags found in additional_parameters."""
    _lora_type(raw, values, origin, report)
    import_sdxl_keys(raw, values, origin, report)
    attention = _attention(raw, report)
    if attention is not None:
        values["attention"], origin["attention"] = attention, "xformers"
    _old_names(raw, values, origin, report)
    _noise_offset_type(raw, report)
    _values_we_replace(raw, report)
    _extra_launch_args(raw, values, origin, report)
    _argument_strings(raw, report)
    return _additional_parameters(raw, values, origin, report)


def _extra_launch_args(raw: dict[str, Any], values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> None:
    """`--machine_rank 1 --main_process_ip 10.0.0.1` in the extra accelerate arguments -> our settings; any other
    flag there is named as left out (we never pass free text to accelerate)."""
    text = raw.get(_EXTRA_ARGS_KEY)
    if not isinstance(text, str) or not text.strip():
        return  # "" / null: classified with the other unused keys (no effect)
    raw.pop(_EXTRA_ARGS_KEY)
    # split as the Kohya GUI splits it (class_accelerate_launch.py: quotes removed, split at spaces); never run
    tokens = text.replace('"', "").split()
    by_flag = {flag: name for name, flag in EXTRA_LAUNCH_FLAGS.items()}
    left: list[str] = []
    i = 0
    while i < len(tokens):
        flag, _, value = tokens[i].partition("=")
        if flag in by_flag and (value or i + 1 < len(tokens)):
            if not value:
                i += 1
                value = tokens[i]
            name = by_flag[flag]
            values[name], origin[name] = value, _EXTRA_ARGS_KEY
            report.migrated.append(ReportItem.of(_EXTRA_ARGS_KEY, "kohya.launch_flag", flag=flag, value=value, setting=name))
        else:
            left.append(tokens[i])
        i += 1
    if left:
        report.unsupported.append(ReportItem.of(_EXTRA_ARGS_KEY, "kohya.left_out", value=repr(" ".join(left))))


def _lora_type(raw: dict[str, Any], values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> None:
    kind = raw.get("LoRA_type")
    _dora(raw, report, kind)
    _lycoris_options(raw, report, LORA_TYPES.get(kind) if isinstance(kind, str) else None)
    if "LoRA_type" in raw:
        kind = raw.pop("LoRA_type")
        if kind in (None, ""):
            report.defaulted.append(ReportItem("LoRA_type", f"{kind!r} -> 'Standard'"))
        elif LORA_TYPES.get(kind):  # refused kinds never get here (refuse_unless_sd15_lora)
            values["lora_type"], origin["lora_type"] = LORA_TYPES[kind], "LoRA_type"
            if kind.startswith("LyCORIS") and LORA_TYPES[kind] == "LoCon":
                report.migrated.append(ReportItem.of("LoRA_type", "kohya.lycoris_as_locon", kind=repr(kind)))
            elif kind != LORA_TYPES[kind]:
                report.migrated.append(ReportItem("LoRA_type", f"{kind!r} -> lora_type {LORA_TYPES[kind]!r}"))


# The LoRA_types whose run passes dora_wd to LyCORIS (kohya_gui/lora_gui.py train_model: `if LoRA_type == "LoCon" or
# LoRA_type == "LyCORIS/LoCon"`: network_module lycoris.kohya, network_args "... dora_wd={dora_wd} ... algo=locon");
# Standard and Kohya LoCon run sd-scripts' networks.lora, which has no DoRA. LoHa/LoKr: refused (_LYCORIS_REFUSED).
_DORA_LORA_TYPES = ("LoCon", "LyCORIS/LoCon")


def _dora(raw: dict[str, Any], report: ImportReport, kind: Any) -> None:
    """dora_wd: the Kohya GUI key, or `dora_wd=True` in network_args (as sd-scripts users pass it to lycoris.kohya)."""
    text = raw.get("network_args")
    if isinstance(text, str):
        items = kohya_split_args(text)
        found = [item for item in items if item.partition("=")[0] == "dora_wd"]
        if found:
            raw["network_args"] = " ".join(item for item in items if item not in found)
            if any(_truthy(item.partition("=")[2]) for item in found) and not _truthy(raw.get("dora_wd")):
                raw["dora_wd"] = True
                report.migrated.append(ReportItem.of("network_args dora_wd", "kohya.dora_from_args", value=repr(found[-1])))
    if kind in ("LyCORIS/LoHa", "LyCORIS/LoKr") or kind in _DORA_LORA_TYPES or "dora_wd" not in raw:
        return
    if _truthy(raw["dora_wd"]):
        report.ignored.append(ReportItem.of("dora_wd", "kohya.dora_no_effect", value=repr(raw.pop("dora_wd")), kind=repr(kind or "Standard")))


def _lycoris_options(raw: dict[str, Any], report: ImportReport, ours: str | None) -> None:
    """LyCORIS network_args keys: ours for LoHa/LoKr (use_cp is the older name of use_tucker), said out loud where
    peft has no such option; for every other type they are not our settings and are classified as before."""
    if ours not in ("LoHa", "LoKr"):
        for key in _LYCORIS_KEYS:
            if key in raw:
                _classify_unused(key, raw.pop(key), report)
        return
    if "use_cp" in raw:
        use_cp = raw.pop("use_cp")
        if _truthy(use_cp) and ours == "LoKr":
            report.unsupported.append(ReportItem.of("use_cp", "kohya.lokr_tucker", value=repr(use_cp)))
        elif _truthy(use_cp) and not _truthy(raw.get("use_tucker")):
            raw["use_tucker"] = True
            report.migrated.append(ReportItem("use_cp", f"{use_cp!r} -> use_tucker True"))
        else:
            report.ignored.append(ReportItem.of("use_cp", "kohya.no_effect", value=repr(use_cp)))
    if ours == "LoKr" and _truthy(raw.get("use_tucker")):
        report.unsupported.append(ReportItem.of("use_tucker", "kohya.lokr_tucker", value=repr(raw.pop("use_tucker"))))
    for key in _LYCORIS_REFUSED:
        if key in raw and _truthy(raw[key]):
            report.unsupported.append(ReportItem.of(key, "kohya.lycoris_refused", value=repr(raw.pop(key)), option=key))
    if _number(raw.get("network_dropout")):
        report.migrated.append(ReportItem.of("network_dropout", "kohya.lycoris_dropout", value=repr(raw["network_dropout"])))
        raw["network_dropout"] = 0
    if raw.get("LyCORIS_preset") not in (None, ""):
        report.migrated.append(ReportItem.of("LyCORIS_preset", "kohya.lycoris_preset", value=repr(raw.pop("LyCORIS_preset"))))


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
    elif "optimizer" not in raw:
        # kohya_gui/common_gui.py update_my_data: my_data.setdefault("optimizer", "AdamW8bit" if use_8bit_adam else "AdamW")
        values["optimizer"], origin["optimizer"] = "AdamW", "optimizer"
        report.migrated.append(ReportItem.of("optimizer", "kohya.optimizer_missing", value="'AdamW'"))

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
            epochs_n = _SPECS["epoch"].coerce(epochs) if epochs not in (None, "") else 0
        except ValueError as exc:
            raise MsgError(Msg.of("kohya.bad_value", key="max_train_epochs", reason=_reason(exc), value=repr(epochs))) from None
        if epochs_n > 0:
            if raw.get("epoch") not in (None, "", epochs_n):
                report.ignored.append(ReportItem.of("epoch", "kohya.epoch_overridden", value=repr(raw["epoch"])))
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
    if _zero(raw.get("network_alpha")):  # lora_gui.py train_model drops a 0 from the TOML
        raw["network_alpha"] = 1.0  # sd-scripts' --network_alpha default (train_network.py); conv_alpha 0 goes in network_args
        report.migrated.append(ReportItem.of("network_alpha", "kohya.alpha_zero"))
    if raw.get("caption_extension") == ".none-use-foldername":
        report.migrated.append(ReportItem.of("caption_extension", "kohya.folder_name_captions"))

    if _truthy(raw.get("use_wandb")) or raw.get("log_with") in ("wandb", "all"):
        key = "use_wandb" if _truthy(raw.get("use_wandb")) else "log_with"
        report.unsupported.append(ReportItem.of(key, "kohya.wandb", value=repr(raw.pop(key))))


def kohya_split_args(text: str) -> list[str]:
    """An argument string as the Kohya GUI splits it (train_model: str(x).replace('"', "").split()), then cleaned
    where sd-scripts would misread it: single quotes around an item, a stray comma between items (sd-scripts'
    ast.literal_eval("0.01,") is the tuple (0.01,)), brackets around a tuple value."""
    items = []
    for item in text.replace('"', "").split():
        item = item.strip("'").strip(",")
        if not item:
            continue
        key, eq, value = item.partition("=")
        value = value.strip("'")
        if len(value) > 1 and value[0] + value[-1] in ("()", "[]"):
            value = value[1:-1]
        items.append(f"{key}{eq}{value.strip(',')}" if eq else key)
    return items


def _argument_strings(raw: dict[str, Any], report: ImportReport) -> None:
    """optimizer_args (ours, as a space-separated string), lr_scheduler_args and network_args (no setting of ours)."""
    text = raw.get("optimizer_args")
    if isinstance(text, str) and text.strip():
        joined = " ".join(kohya_split_args(text))
        if joined != text.strip():
            raw["optimizer_args"] = joined
            report.coerced.append(ReportItem.of("optimizer_args", "kohya.args_split", value=repr(text), result=repr(joined)))
    text = raw.get("lr_scheduler_args")
    if isinstance(text, str) and kohya_split_args(text):
        raw.pop("lr_scheduler_args")
        scheduler = raw.get("lr_scheduler") or _SPECS["lr_scheduler"].default
        report.unsupported.append(ReportItem.of("lr_scheduler_args", "kohya.scheduler_args", value=repr(" ".join(kohya_split_args(text))), scheduler=scheduler))
    text = raw.get("network_args")
    if isinstance(text, str) and kohya_split_args(text):
        raw.pop("network_args")
        rest = []
        for item in kohya_split_args(text):
            key, _, value = item.partition("=")
            if key in ("conv_dim", "conv_alpha") and raw.get(key) in (None, ""):
                raw[key] = value
            elif key not in ("conv_dim", "conv_alpha"):
                rest.append(item)
        report.migrated.append(ReportItem.of("network_args", "kohya.network_args_mapped", value=repr(text)))
        for item in rest:
            report.unsupported.append(ReportItem.of(f"network_args {item.partition('=')[0]}", "kohya.left_out", value=repr(item)))


# sd-scripts flags named differently from our settings (library/train_util.py argument names).
_FLAG_NAMES = {"resolution": "max_resolution", "optimizer_type": "optimizer"}
_ATTENTION_FLAGS = {"xformers": "xformers", "sdpa": "sdpa", "mem_eff_attn": "sdpa"}
_TRAIN_MODE_FLAGS = ("network_train_unet_only", "network_train_text_encoder_only")
# Flags whose value has no effect at sd-scripts' default.
_NEUTRAL_FLAGS = {"min_timestep": ("0",), "max_timestep": ("1000",)}


def _additional_parameters(raw: dict[str, Any], values: dict[str, Any], origin: dict[str, str], report: ImportReport) -> set[str]:
    """The Kohya GUI appends additional_parameters to the trainer's command line (common_gui.py
    run_cmd_advanced_training: quotes removed, split at spaces), where they override the TOML. Flags that are our
    settings are taken over; the rest are named."""
    text = raw.pop("additional_parameters", None)
    if text is None or not isinstance(text, str) or not text.strip():
        if text not in (None, ""):
            report.unsupported.append(ReportItem.of("additional_parameters", "kohya.left_out", value=repr(text)))
        elif text == "":
            report.ignored.append(ReportItem.of("additional_parameters", "kohya.no_effect", value="''"))
        return set()
    parsed: list[tuple[str, list[str]]] = []
    for token in text.replace('"', "").split():
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            parsed.append((name, [value] if eq else []))
        elif parsed:
            parsed[-1][1].append(token)
        else:
            parsed.append((token, []))  # a stray word before any flag: sd-scripts would reject it
    flags: set[str] = set()
    for name, args in parsed:
        shown = "--" + name + ("=" + " ".join(args) if args else "")
        leaf = _FLAG_NAMES.get(name, name)
        if name in _TRAIN_MODE_FLAGS and not args:
            flags.add(name)
            code = "kohya.flag_unet_only" if name == "network_train_unet_only" else "kohya.flag_te_only"
            report.migrated.append(ReportItem.of("additional_parameters", code, flag=shown))
        elif name in _ATTENTION_FLAGS and not args:
            values["attention"], origin["attention"] = _ATTENTION_FLAGS[name], "additional_parameters"
            report.migrated.append(ReportItem.of("additional_parameters", "kohya.flag_mapped", flag=shown, setting="attention", value=repr(_ATTENTION_FLAGS[name])))
        elif name == "optimizer_args" and args:
            values["optimizer_args"], origin["optimizer_args"] = " ".join(kohya_split_args(" ".join(args))), "additional_parameters"
            report.migrated.append(ReportItem.of("additional_parameters", "kohya.flag_mapped", flag=shown, setting="optimizer_args", value=repr(values["optimizer_args"])))
        elif name == "text_encoder_lr" and import_te_rates_flag(args, shown, values, origin, report):
            pass
        elif (leaf in DIRECT_KEYS or leaf in ("no_half_vae", "cache_text_encoder_outputs")) and leaf not in OURS_ONLY and (len(args) == 1 or (not args and _SPECS[leaf].kind == "bool")):
            given: str | bool = args[0] if args else True
            values[leaf], origin[leaf] = given, "additional_parameters"
            report.migrated.append(ReportItem.of("additional_parameters", "kohya.flag_mapped", flag=shown, setting=leaf, value=repr(given)))
        elif name in _NEUTRAL_FLAGS and args and args[0] in _NEUTRAL_FLAGS[name]:
            report.ignored.append(ReportItem.of("additional_parameters", "kohya.flag_no_effect", flag=shown))
        else:
            report.unsupported.append(ReportItem.of("additional_parameters", "kohya.flag_left_out", flag=shown))
    return flags


def _attention(raw: dict[str, Any], report: ImportReport) -> str | None:
    xformers = raw.pop("xformers", None)
    mem_eff = raw.pop("mem_eff_attn", None)
    result = None
    if isinstance(xformers, bool) or (isinstance(xformers, str) and xformers.lower() in {"true", "false"}):
        result = "xformers" if _truthy(xformers) else "none"
        report.migrated.append(ReportItem("xformers", f"{xformers!r} -> attention {result!r}"))
    elif isinstance(xformers, str) and xformers.strip().lower() in {"xformers", "sdpa", "none"}:
        result = xformers.strip().lower()
    elif xformers == "":
        # train_model passes --xformers only for "xformers" and --sdpa only for "sdpa": plain attention
        result = "none"
        report.defaulted.append(ReportItem.of("xformers", "kohya.empty_as_kohya", value="attention 'none'"))
    elif xformers is not None:
        raise MsgError(Msg.of("kohya.bad_value", key="xformers", reason=Msg.of("kohya.expected.xformers"), value=repr(xformers)))
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
    if key.startswith(_OTHER_FAMILY_PREFIXES) or key in _OTHER_FAMILY_KEYS or key.endswith("_checkbox") or key in ("v2", "sdxl"):
        report.ignored.append(ReportItem.of(key, "kohya.other_family", value=shown))  # switched off: refused otherwise
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


def _zero(value: Any) -> bool:
    """0, 0.0 or "0" (not "", False or null, which mean something else in a Kohya file)."""
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float, str)) and float(value) == 0
    except ValueError:
        return False


def _number(value: Any) -> bool:
    try:
        return float(value) != 0
    except (TypeError, ValueError):
        return False


# -- export -----------------------------------------------------------------------------------------------------

_KOHYA_LORA_TYPE = {"Standard": "Standard", "LoCon": "Kohya LoCon", "LoHa": "LyCORIS/LoHa", "LoKr": "LyCORIS/LoKr"}
_KOHYA_INTS = frozenset({"lr_warmup"})  # a float for us, an integer percentage slider in the Kohya GUI
# Kohya keys whose on-screen default would change the run: the value that makes them inert.
_EXPORT_NEUTRAL = {"model_list": "custom", "max_train_epochs": 0, "stop_text_encoder_training": 0, "mem_eff_attn": False}


def export_kohya(config: TrainingConfig) -> tuple[dict[str, Any], ImportReport]:
    """Our config -> a flat Kohya GUI dict with every key of the current LoRA tab (KOHYA_LORA_TAB), so loading
    it leaves no stale on-screen value behind, and a report of what Kohya cannot express."""
    report = ImportReport(format="kohya")
    defaults = TrainingConfig()
    out: dict[str, Any] = {k: v for k, v in KOHYA_LORA_TAB.items()}
    out.update(_EXPORT_NEUTRAL)
    out.update({"v2": False, "LoRA_type": _KOHYA_LORA_TYPE[config.network.lora_type]})
    flags = export_sdxl_keys(config, out, report)
    out["xformers"] = config.precision.attention
    for name in sorted(DIRECT_KEYS - OURS_ONLY):
        value = get_value(config, name)
        if value is None:  # an empty per-module rate means "the learning rate", which Kohya writes out explicitly
            value = config.optimizer.learning_rate
            report.migrated.append(ReportItem.of(name, "kohya.export_rate", value=repr(value)))
        if name in FLAG_ONLY:
            continue  # written as sd-scripts flags in additional_parameters (export_sdxl_keys)
        if name in VALIDATION_FLAGS:  # written as sd-scripts flags into additional_parameters (below)
            continue
        if name not in KOHYA_LORA_TAB:  # caption_tag_dropout_rate: only sd-scripts' dataset TOML has it
            if name in _EXPORT_AS_FLAGS and _export_flag(flags, name, value, get_value(defaults, name)):
                continue
            if value != get_value(defaults, name):
                report.unsupported.append(ReportItem.of(name, "kohya.not_exported", value=repr(value)))
            continue
        out[name] = int(value) if name in _KOHYA_INTS and float(value).is_integer() else value
    for name in sorted(OURS_ONLY):
        if name == "text_encoder_2_lr" and any(f.startswith("--text_encoder_lr") for f in flags) or name == "text_encoder_2_lr" and get_value(config, name) in (None, config.effective_text_encoder_lr):
            continue
        if get_value(config, name) != get_value(defaults, name):
            report.unsupported.append(ReportItem.of(name, "kohya.not_exported", value=repr(get_value(config, name))))
    if not config.network.network_alpha:  # ours means alpha = rank; the Kohya GUI would drop the 0
        out["network_alpha"] = config.network.network_dim
        report.migrated.append(ReportItem.of("network_alpha", "kohya.alpha_zero_export", value=config.network.network_dim))
    _export_noise_type(config, out, report)
    if config.network.dora_wd:  # the Kohya GUI passes dora_wd only with LyCORIS/LoCon (see _DORA_LORA_TYPES)
        out["LoRA_type"] = "LyCORIS/LoCon"
        if config.network.lora_type == "Standard":
            out["LyCORIS_preset"] = "attn-mlp"
            report.migrated.append(ReportItem.of("lora_type", "kohya.dora_export_standard"))
    out[_EXTRA_ARGS_KEY] = _export_launch_flags(config)
    # every sd-scripts flag goes into the one additional_parameters string: SDXL's, the masks', validation's
    out["additional_parameters"] = " ".join(flags + _export_validation_flags(config))
    return out, report


# sd-scripts flags the Kohya GUI LoRA tab has no field for: written into its additional_parameters (which it appends
# to train_network.py's command line, common_gui.py) and read back from there by _additional_parameters.
_EXPORT_AS_FLAGS = ("alpha_mask", "conditioning_data_dir")


def _export_flag(flags: list[str], name: str, value: Any, default: Any) -> bool:
    """Append `--name [value]` to the additional_parameters flags; False when it cannot be said there (a path with a space,
    which the Kohya GUI would split), so the caller reports it."""
    if value == default:
        return True
    if isinstance(value, bool):
        flag = f"--{name}"
    elif any(c.isspace() for c in str(value)):
        return False
    else:
        flag = f"--{name} {value}"
    flags.append(flag)
    return True


# Validation loss (sd-scripts train_network.py's flags, same names as ours): the Kohya GUI (kohya_ss 45088f0) has
# no field for them, so its users pass them in additional_parameters, which the import maps flag by flag.
VALIDATION_FLAGS = ("validation_split", "validation_seed", "validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps")


def _export_validation_flags(config: TrainingConfig) -> list[str]:
    """The validation settings that differ from ours by default, as sd-scripts flags. Our 0s mean sd-scripts'
    'not given' (None), so they are left out."""
    o = config.training
    return [f"--{name} {getattr(o, name)}" for name in VALIDATION_FLAGS
            if getattr(o, name) and getattr(o, name) != getattr(TrainingConfig().training, name)]


def _export_launch_flags(config: TrainingConfig) -> str:
    defaults = TrainingConfig().launch
    parts = []
    for name, flag in EXTRA_LAUNCH_FLAGS.items():
        value = getattr(config.launch, name)
        if value != getattr(defaults, name):
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _export_noise_type(config: TrainingConfig, out: dict[str, Any], report: ImportReport) -> None:
    """Kohya passes noise_offset only with noise_offset_type Original (its default), multires noise only with Multires."""
    o = config.noise
    out["noise_offset_type"] = "Multires" if o.multires_noise_iterations > 0 else "Original"
    if o.multires_noise_iterations > 0 and o.noise_offset > 0:
        report.unsupported.append(ReportItem.of("noise_offset", "kohya.export_noise", value=repr(o.noise_offset)))


def kohya_to_json(data: dict[str, Any]) -> str:
    """Kohya's own file layout: flat, keys sorted, indent 2."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def looks_like_kohya(data: dict[str, Any]) -> bool:
    """Our JSON has a schema_version, a preset header or group objects; a Kohya file is flat. An empty object is
    nobody's config: it goes to the Kohya reader, which refuses it by name."""
    return not ("schema_version" in data or "preset" in data or any(isinstance(data.get(g), dict) for g in GROUPS))
