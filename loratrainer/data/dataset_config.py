"""Kohya's dataset config (`dataset_config`): sd-scripts' .toml with [general], [[datasets]], [[datasets.subsets]].

Read as *kohya-ss/sd-scripts library/config_util.py* reads it (docs/kohya-compat.md section 1, docs/dataset.md): which key may
stand at which level (ConfigSanitizer's schemas: an unknown key is refused, as voluptuous refuses it), the
types it accepts, and inheritance subset -> dataset -> [general] -> the command line (here: our settings) ->
the dataclass default (BlueprintGenerator.generate_params_by_fallbacks). As in sd-scripts, train_data_dir and
reg_data_dir are ignored while a dataset config is set.

What our loop trains:
- per subset: image_dir, num_repeats, class_tokens (the caption of an image without caption file),
  caption_extension, is_reg; each [[datasets]] is batched and reg-balanced on its own, as sd-scripts'
  DatasetGroup does (TrainSample.group);
- one value for the whole run, written onto our settings: the per-dataset keys (resolution, batch_size and the
  bucket keys) and the caption/augmentation keys. Different values in two datasets (or subsets) are refused by
  key in one sentence: our loop has one bucket plan, one batch size and one set of augmentations per run.
Fine-tuning datasets (metadata_file), ControlNet/mask datasets (conditioning_data_dir), validation_split and
the caption syntax extensions are refused by key when set to anything but sd-scripts' default.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from loratrainer.config import TrainingConfig
from loratrainer.errors import UserError
from loratrainer.messages import Msg, MsgError, define

if sys.version_info >= (3, 11):
    import tomllib
else:  # pyproject.toml installs tomli on 3.10: the same parser, before it joined the standard library
    import tomli as tomllib

define({
    "dataset_config.not_found": "the dataset config file does not exist: choose an existing .toml file",
    "dataset_config.extension": "a dataset config must be a .toml (or .json) file, as in sd-scripts",
    "dataset_config.unreadable": "this dataset config cannot be read as {kind}: {reason}",
    "dataset_config.not_object": "the file is not a JSON object",
    "dataset_config.top_level": "`{key}` is not a section of a dataset config: only [general] and [[datasets]] are (sd-scripts refuses it too)",
    "dataset_config.unknown_key": "`{key}` in {where} is not a key sd-scripts knows at that level (it refuses the file too): remove it or move it",
    "dataset_config.bad_type": "`{key}` in {where} must be {kind}, not {value}",
    "dataset_config.no_subsets": "{where} has no [[datasets.subsets]] with an image_dir: add one",
    "dataset_config.no_datasets": "the dataset config has no [[datasets]]: add one with its [[datasets.subsets]]",
    "dataset_config.no_image_dir": "{where} has no image_dir (sd-scripts requires it): set it to the folder that holds the images",
    "dataset_config.fine_tuning": (
        "`metadata_file` in {where}: fine-tuning datasets with a metadata file are not supported; use a subset with "
        "image_dir and caption files next to the images"
    ),
    "dataset_config.controlnet": (
        "`conditioning_data_dir` in {where}: ControlNet and masked-loss conditioning datasets are not supported; remove it"
    ),
    "dataset_config.validation": "`{key}` in {where}: validation from a dataset config is not supported yet; remove it or set it to 0",
    "dataset_config.unsupported": "`{key}` = {value} in {where} is not supported by loratrainer: remove it or set it to {default}",
    "dataset_config.differs": (
        "`{key}` is {a} in {where_a} but {b} in {where_b}: loratrainer trains one {key} for the whole run, so "
        "datasets (and subsets) with different values are not supported; use one value"
    ),
    "dataset_config.bad_value": "`{key}` = {value} in {where}: {reason}",
    "dataset_config.zero_repeats": "num_repeats is {value} in {where}: a subset needs at least 1 (sd-scripts skips it silently)",
    "dataset_config.ignored_folders": "train_data_dir and reg_data_dir are ignored: the dataset config names the image folders (as in sd-scripts)",
    "dataset_config.duplicate": "{where} repeats the image_dir of an earlier subset of its dataset and is ignored, as in sd-scripts",
})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or isinstance(v, float)


def _is_resolution(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v))


# Key -> (type test, the words for its type), from ConfigSanitizer's schemas (voluptuous: `bool` and `int` are
# exact, `float` alone takes no int, Any(float, int) takes both).
define({
    "dataset_config.kind.bool": "true or false",
    "dataset_config.kind.int": "a whole number",
    "dataset_config.kind.text": "text",
    "dataset_config.kind.number": "a number",
    "dataset_config.kind.decimal": "a decimal number",
    "dataset_config.kind.pair": "two decimal numbers",
    "dataset_config.kind.table": "a table",
    "dataset_config.kind.resolution": "a number or [width, height]",
    "dataset_config.kind.tables": "a list of [[{name}]] tables",
    "dataset_config.the_file": "the file",
})
_BOOL, _INT = (lambda v: isinstance(v, bool), "dataset_config.kind.bool"), (_is_int, "dataset_config.kind.int")
_STR, _NUM = (lambda v: isinstance(v, str), "dataset_config.kind.text"), (_is_number, "dataset_config.kind.number")
_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # SUBSET_ASCENDABLE_SCHEMA
    "color_aug": _BOOL, "face_crop_aug_range": (lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v), "dataset_config.kind.pair"),
    "flip_aug": _BOOL, "num_repeats": _INT, "random_crop": _BOOL, "shuffle_caption": _BOOL, "keep_tokens": _INT,
    "keep_tokens_separator": _STR, "secondary_separator": _STR, "caption_separator": _STR, "enable_wildcard": _BOOL,
    "token_warmup_min": _INT, "token_warmup_step": _NUM, "caption_prefix": _STR, "caption_suffix": _STR,
    "custom_attributes": (lambda v: isinstance(v, dict), "dataset_config.kind.table"), "resize_interpolation": _STR,
    # DO_SUBSET_ASCENDABLE_SCHEMA (train_network supports caption dropout)
    "caption_dropout_every_n_epochs": _INT, "caption_dropout_rate": _NUM, "caption_tag_dropout_rate": _NUM,
    # DB_SUBSET_ASCENDABLE_SCHEMA
    "caption_extension": _STR, "class_tokens": _STR, "cache_info": _BOOL,
    # DB_SUBSET_DISTINCT_SCHEMA, FT_SUBSET_DISTINCT_SCHEMA, CN_SUBSET_DISTINCT_SCHEMA
    "image_dir": _STR, "is_reg": _BOOL, "alpha_mask": _BOOL, "metadata_file": _STR, "conditioning_data_dir": _STR,
    # DATASET_ASCENDABLE_SCHEMA
    "batch_size": _INT, "bucket_no_upscale": _BOOL, "bucket_reso_steps": _INT, "enable_bucket": _BOOL,
    "max_bucket_reso": _INT, "min_bucket_reso": _INT, "validation_seed": _INT, "validation_split": (lambda v: isinstance(v, float), "dataset_config.kind.decimal"),
    "resolution": (_is_resolution, "dataset_config.kind.resolution"), "network_multiplier": (lambda v: isinstance(v, float), "dataset_config.kind.decimal"),
}
_SUBSET_ASCENDABLE = {
    "color_aug", "face_crop_aug_range", "flip_aug", "num_repeats", "random_crop", "shuffle_caption", "keep_tokens",
    "keep_tokens_separator", "secondary_separator", "caption_separator", "enable_wildcard", "token_warmup_min",
    "token_warmup_step", "caption_prefix", "caption_suffix", "custom_attributes", "resize_interpolation",
    "caption_dropout_every_n_epochs", "caption_dropout_rate", "caption_tag_dropout_rate",
    "caption_extension", "class_tokens", "cache_info",
}
_DATASET_ASCENDABLE = {
    "batch_size", "bucket_no_upscale", "bucket_reso_steps", "enable_bucket", "max_bucket_reso", "min_bucket_reso",
    "validation_seed", "validation_split", "resolution", "network_multiplier", "resize_interpolation",
}
_SUBSET_DISTINCT = {"image_dir", "is_reg", "alpha_mask", "metadata_file", "conditioning_data_dir"}
GENERAL_KEYS = _DATASET_ASCENDABLE | _SUBSET_ASCENDABLE
DATASET_KEYS = GENERAL_KEYS | {"subsets"}
SUBSET_KEYS = _SUBSET_ASCENDABLE | _SUBSET_DISTINCT

# Keys trained with one value for the whole run: the TOML key -> our setting.
RUN_WIDE_DATASET_KEYS = {
    "resolution": "buckets.max_resolution", "batch_size": "training.train_batch_size", "enable_bucket": "buckets.enable_bucket",
    "min_bucket_reso": "buckets.min_bucket_reso", "max_bucket_reso": "buckets.max_bucket_reso",
    "bucket_reso_steps": "buckets.bucket_reso_steps", "bucket_no_upscale": "buckets.bucket_no_upscale",
}
RUN_WIDE_SUBSET_KEYS = {
    "shuffle_caption": "dataset.shuffle_caption", "keep_tokens": "dataset.keep_tokens", "flip_aug": "dataset.flip_aug",
    "random_crop": "dataset.random_crop", "color_aug": "dataset.color_aug", "caption_dropout_rate": "dataset.caption_dropout_rate",
    "caption_dropout_every_n_epochs": "dataset.caption_dropout_every_n_epochs", "caption_tag_dropout_rate": "dataset.caption_tag_dropout_rate",
}
# Keys we do not train, with sd-scripts' default (DreamBoothSubsetParams, BaseDatasetParams): that value has no
# effect and is accepted; any other value is refused by key. validation_seed alone changes nothing.
UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "caption_separator": ",", "keep_tokens_separator": "", "secondary_separator": None, "enable_wildcard": False,
    "face_crop_aug_range": None, "caption_prefix": None, "caption_suffix": None, "token_warmup_min": 1,
    "token_warmup_step": 0, "custom_attributes": None, "resize_interpolation": None, "network_multiplier": 1.0,
    "cache_info": False, "alpha_mask": False,
}


@dataclass(frozen=True)
class Subset:
    """One [[datasets.subsets]] with its values resolved (subset -> dataset -> general -> our settings)."""

    image_dir: Path
    num_repeats: int
    class_tokens: str | None  # the caption of an image without caption file (None: an empty caption, as sd-scripts)
    caption_extension: str
    is_reg: bool
    dataset: int  # 0-based index of its [[datasets]]: batches and reg balancing are per dataset
    where: str  # "[[datasets]] 1, [[datasets.subsets]] 2", for messages


@dataclass(frozen=True)
class DatasetConfig:
    path: Path
    subsets: list[Subset]
    settings: dict[str, Any]  # our setting path -> the value the file gives it for the whole run
    duplicates: tuple[str, ...] = ()  # subsets left out: same image_dir as an earlier subset of their dataset


def _where(d: int | None = None, s: int | None = None) -> str:
    if d is None:
        return "[general]"
    return f"[[datasets]] {d + 1}" + (f", [[datasets.subsets]] {s + 1}" if s is not None else "")


def _fail(code: str, path: Path, **params: Any) -> UserError:
    return UserError(Msg.of(code, **params), path=path)


def load_user_config(path: Path) -> dict:
    """The file as a dict: TOML or JSON by its name, as sd-scripts' load_user_config."""
    if not path.is_file():
        raise _fail("dataset_config.not_found", path)
    name = path.name.lower()
    try:
        if name.endswith(".toml"):
            with open(path, "rb") as f:
                return tomllib.load(f)
        if name.endswith(".json"):
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            if not isinstance(data, dict):
                raise MsgError(Msg.of("dataset_config.not_object"))
            return data
    except (tomllib.TOMLDecodeError, ValueError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, MsgError) else str(exc)  # the parser's own words only as the detail
        raise _fail("dataset_config.unreadable", path, kind="TOML" if name.endswith(".toml") else "JSON", reason=reason) from None
    except OSError as exc:
        raise _fail("dataset_config.unreadable", path, kind=path.suffix.lstrip(".").upper(), reason=exc.strerror or str(exc)) from None
    raise _fail("dataset_config.extension", path)


def read_dataset_config(path: str | Path, config: TrainingConfig) -> DatasetConfig:
    """The file's subsets and run-wide settings; a UserError naming the key for anything we do not train."""
    path = Path(path).expanduser()
    raw = load_user_config(path)
    for key in raw:
        if key not in ("general", "datasets"):
            raise _fail("dataset_config.top_level", path, key=key)
    general = raw.get("general", {})
    if not isinstance(general, dict):
        raise _fail("dataset_config.bad_type", path, key="general", where=Msg.of("dataset_config.the_file"), kind=Msg.of("dataset_config.kind.table"), value=_show(general))
    _check_keys(general, GENERAL_KEYS, _where(), path)
    datasets = raw.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
        raise _fail("dataset_config.bad_type", path, key="datasets", where=Msg.of("dataset_config.the_file"), kind=Msg.of("dataset_config.kind.tables", name="datasets"), value=_show(datasets))
    if not datasets:
        raise _fail("dataset_config.no_datasets", path)
    ours = _our_values(config)
    subsets: list[Subset] = []
    duplicates: list[str] = []
    run_wide: dict[str, tuple[Any, str]] = {}  # TOML key -> (value, where it was found)
    conflicts: list[UserError] = []
    for d, dataset in enumerate(datasets):
        _check_keys(dataset, DATASET_KEYS, _where(d), path)
        entries = dataset.get("subsets", [])
        if not isinstance(entries, list) or not all(isinstance(s, dict) for s in entries):
            raise _fail("dataset_config.bad_type", path, key="subsets", where=_where(d), kind=Msg.of("dataset_config.kind.tables", name="datasets.subsets"), value=_show(entries))
        if not entries:
            raise _fail("dataset_config.no_subsets", path, where=_where(d))
        dataset_fallbacks = [dataset, general, ours]
        for key in RUN_WIDE_DATASET_KEYS:
            _agree(run_wide, key, _search(key, dataset_fallbacks), _where(d), path, conflicts)
        _refuse_dataset_level(dataset_fallbacks, _where(d), path)
        seen: set[Path] = set()
        for s, entry in enumerate(entries):
            where = _where(d, s)
            _check_keys(entry, SUBSET_KEYS, where, path)
            if "metadata_file" in entry:
                raise _fail("dataset_config.fine_tuning", path, where=where)
            if "conditioning_data_dir" in entry:
                raise _fail("dataset_config.controlnet", path, where=where)
            if "image_dir" not in entry:
                raise _fail("dataset_config.no_image_dir", path, where=where)
            fallbacks = [entry, dataset, general, ours]
            for key, default in UNSUPPORTED_DEFAULTS.items():
                value = _search(key, fallbacks)
                if value is not None and value != default and key not in _DATASET_ASCENDABLE:
                    raise _fail("dataset_config.unsupported", path, key=key, value=_show(value), where=_found_in(key, entry, dataset, where, d), default=_show(default))
            for key in RUN_WIDE_SUBSET_KEYS:
                _agree(run_wide, key, _search(key, fallbacks), where, path, conflicts)
            repeats = _search("num_repeats", fallbacks)
            repeats = 1 if repeats is None else repeats  # DreamBoothSubsetParams' default (our settings have none)
            if repeats < 1:
                raise _fail("dataset_config.zero_repeats", path, value=repeats, where=where)
            image_dir = _resolve(entry["image_dir"], path)
            if image_dir in seen:
                duplicates.append(where)
                continue  # sd-scripts ignores a duplicated subset of one dataset (and logs it); the check notes it
            seen.add(image_dir)
            subsets.append(Subset(
                image_dir=image_dir,
                num_repeats=repeats,
                class_tokens=_search("class_tokens", fallbacks),
                caption_extension=_search("caption_extension", fallbacks),
                is_reg=bool(_search("is_reg", fallbacks) or False),
                dataset=d,
                where=where,
            ))
    if conflicts:
        raise conflicts[0]
    settings = {RUN_WIDE_DATASET_KEYS.get(k) or RUN_WIDE_SUBSET_KEYS[k]: _ours(k, v) for k, (v, _) in run_wide.items()}
    return DatasetConfig(path, subsets, settings, tuple(duplicates))


def with_dataset_config(config: TrainingConfig) -> TrainingConfig:
    """`config` with the dataset config's run-wide values applied (itself when none is set); a UserError otherwise."""
    if not config.folders.dataset_config.strip():
        return config
    plan = read_dataset_config(config.folders.dataset_config, config)
    return apply_settings(config, plan)


def apply_settings(config: TrainingConfig, plan: DatasetConfig) -> TrainingConfig:
    data = config.model_dump()
    for dotted, value in plan.settings.items():
        group, name = dotted.split(".")
        data[group][name] = value
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        dotted = ".".join(str(p) for p in err["loc"][:2])
        key = next((k for k, v in {**RUN_WIDE_DATASET_KEYS, **RUN_WIDE_SUBSET_KEYS}.items() if v == dotted), dotted)
        raise _fail("dataset_config.bad_value", plan.path, key=key, value=_show(err.get("input")), where=Msg.of("dataset_config.the_file"), reason=err["msg"]) from None


def _our_values(config: TrainingConfig) -> dict[str, Any]:
    """Our settings as sd-scripts' argparse fallback (ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME: train_batch_size -> batch_size)."""
    out: dict[str, Any] = {}
    for key, dotted in {**RUN_WIDE_DATASET_KEYS, **RUN_WIDE_SUBSET_KEYS, "caption_extension": "dataset.caption_extension"}.items():
        group, name = dotted.split(".")
        out[key] = getattr(getattr(config, group), name)
    w, h = _parse_resolution(out["resolution"])
    out["resolution"] = [w, h]
    return out


def _parse_resolution(text: str) -> tuple[int, int]:
    parts = [int(float(p)) for p in str(text).replace("x", ",").split(",") if p.strip()]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _ours(key: str, value: Any) -> Any:
    if key == "resolution":
        w, h = (value, value) if _is_int(value) else value
        return f"{w},{h}"
    return value


def _search(key: str, fallbacks: list[dict]) -> Any:
    """BlueprintGenerator.search_value: the first level that sets the key."""
    for level in fallbacks:
        if level.get(key) is not None:
            return level[key]
    return None


def _check_keys(table: dict, allowed: set[str], where: str, path: Path) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise _fail("dataset_config.unknown_key", path, key=key, where=where)
        if key in _TYPES:
            test, kind = _TYPES[key]
            if not test(value):
                raise _fail("dataset_config.bad_type", path, key=key, where=where, kind=Msg.of(kind), value=_show(value))


def _refuse_dataset_level(fallbacks: list[dict], where: str, path: Path) -> None:
    split = _search("validation_split", fallbacks)
    if split:
        raise _fail("dataset_config.validation", path, key="validation_split", where=where)
    for key in ("network_multiplier", "resize_interpolation"):
        value, default = _search(key, fallbacks), UNSUPPORTED_DEFAULTS[key]
        if value is not None and value != default:
            raise _fail("dataset_config.unsupported", path, key=key, value=_show(value), where=where, default=_show(default))


def _agree(run_wide: dict[str, tuple[Any, str]], key: str, value: Any, where: str, path: Path, conflicts: list[UserError]) -> None:
    """Keep the first value of a run-wide key; a different one later is a conflict, refused once the whole file has
    been read (so a refused kind of dataset is named first: it is the more basic reason)."""
    if key == "resolution" and _is_int(value):
        value = [value, value]
    if key in run_wide and run_wide[key][0] != value:
        first, first_where = run_wide[key]
        conflicts.append(_fail("dataset_config.differs", path, key=key, a=_show(first), where_a=first_where, b=_show(value), where_b=where))
    run_wide.setdefault(key, (value, where))


def _found_in(key: str, entry: dict, dataset: dict, where: str, d: int) -> str:
    return where if key in entry else _where(d) if key in dataset else _where()


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _resolve(image_dir: str, toml_path: Path) -> Path:
    """sd-scripts resolves a relative image_dir against its working directory; a desktop app has none the user
    chose, so **we** resolve it against the TOML's own folder (docs/kohya-compat.md section 1, docs/dataset.md)."""
    p = Path(image_dir).expanduser()
    return p if p.is_absolute() else (toml_path.parent / p)
