"""Our JSON config files: load, save, migrate. Re-exported by the package: import these names from `loratrainer.config`.

A file carries `schema_version`; `MIGRATIONS[n]` turns a version-n document into version n+1, so presets written
by older versions keep loading with the same meaning.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from loratrainer.config import schema
from loratrainer.config.schema import TrainingConfig
from loratrainer.errors import UserError
from loratrainer.files import atomic_write
from loratrainer.messages import Label, Msg, define

Migration = Callable[[dict[str, Any]], dict[str, Any]]

# Schema 2 split the old "optimizer" group, which also held the run's length, the noise and the loss, into
# optimizer / training / noise / loss. Each moved setting keeps its name (its leaf --set key is unchanged).
MOVED_IN_2 = {
    "training": ("train_batch_size", "epoch", "max_train_steps", "gradient_accumulation_steps", "seed"),
    "noise": ("noise_offset", "multires_noise_iterations", "multires_noise_discount", "ip_noise_gamma"),
    "loss": ("min_snr_gamma", "loss_type", "huber_c", "huber_schedule"),
}


def split_optimizer_group(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: move the run-length, noise and loss settings out of "optimizer" into their own groups."""
    old = data.get("optimizer")
    if not isinstance(old, dict):
        return data
    old = dict(old)
    for group, names in MOVED_IN_2.items():
        moved = {name: old.pop(name) for name in names if name in old}
        if moved:
            target = data.get(group)
            data[group] = {**moved, **target} if isinstance(target, dict) else moved
    data["optimizer"] = old
    return data


# Add one whenever a field is renamed, moved or changes meaning (and raise schema.SCHEMA_VERSION).
MIGRATIONS: dict[int, Migration] = {1: split_optimizer_group}

PRESET_HEADER = "preset"  # {"name": ..., "description": ...} in a preset file: not a setting (see presets.py)
# A config is a few KB (a Kohya GUI file with long sample prompts some tens): anything far larger is not one, and
# reading /dev/zero or a huge file must not grow without bound (docs/reliability.md, "Input files").
MAX_CONFIG_BYTES = 2 * 1024 * 1024

define({
    "config_file.not_regular": "{path} is not a regular file (a folder, device or pipe): choose a .json config file",
    "config_file.too_large": "{path} is larger than {limit} MB, so it is not a config file: choose a .json config file",
    "config_file.not_valid": "{path} is not a valid config file ({detail}): choose a .json config file",
    "config_file.nul_in_setting": "{setting}: the text holds a NUL character, which no path or setting may hold",
    "config_file.path_too_long": "{setting}: the path is {size} bytes long; no path may be longer than {limit} bytes",
    "config_file.not_a_number": "{setting}: expected a number, not true/false (got {value})",
    "config_file.bad_version": "schema_version {version!r} is not a valid version number",
    "config_file.newer": "this file was written by a newer loratrainer (schema {version}; this one reads up to {current}): update loratrainer",
    "config_file.bad_preset_header": "{source}: {header}: expected an object with name and description",
    "config_file.invalid_settings": "{source}: {detail}",
    "config_file.not_found": "{path}: file not found",
    "config_file.not_text": "{path}: not a text file",
    "config_file.bad_json": "{path}: not valid JSON (line {line}, column {column}: {detail})",
    "config_file.not_object": "{path}: expected a JSON object of settings",
    "config_file.detail.bad_path": "not a valid path", "config_file.detail.too_deep": "nested too deeply",
})


class ConfigError(UserError, ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    current = schema.SCHEMA_VERSION  # read at call time (a test raises it to try a migration)
    if "schema_version" not in data:
        # a hand-written or partial file says no version: read it as the current layout, but a setting that
        # only version 1 kept under "optimizer" still finds its group
        data = split_optimizer_group(dict(data))
    version = data.get("schema_version", current)
    if not isinstance(version, int) or version < 1:
        raise ConfigError(Msg.of("config_file.bad_version", version=version))
    if version > current:
        raise ConfigError(Msg.of("config_file.newer", version=version, current=current))
    while version < current:
        data = MIGRATIONS[version](dict(data))
        version += 1
        data["schema_version"] = version
    return data


def config_from_dict(data: dict[str, Any], source: str = "config", overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """Our JSON (full config or partial preset; missing settings take their defaults) -> a validated config.
    `overrides` ({setting path: value}, the CLI's --set) are applied before validating, so they can mend it."""
    data = migrate(dict(data))  # first, so that a moved setting is checked in its new group
    for path, value in (overrides or {}).items():
        group, name = path.split(".")
        current = data.get(group)
        data[group] = {**(current if isinstance(current, dict) else {}), name: value}
    _refuse_booleans_as_numbers(data, TrainingConfig, source)
    header = data.pop(PRESET_HEADER, None)
    if header is not None and not isinstance(header, dict):
        raise ConfigError(Msg.of("config_file.bad_preset_header", source=source, header=PRESET_HEADER))
    try:
        config = TrainingConfig.model_validate(data)
    except ValidationError as exc:
        # pydantic's English for the CLI; `fields` lets the page say each bad setting in its language
        raise ConfigError(Msg.of("config_file.invalid_settings", source=source, detail=describe_validation_error(exc)),
                          fields=validation_fields(exc)) from None
    refuse_unusable_text(config, source)
    return config


MAX_PATH_BYTES = 4096  # PATH_MAX on Linux, as the GUI's guard (gui/app.MAX_LINE_BYTES) holds a path box to


def refuse_unusable_text(config: TrainingConfig, source: str) -> None:
    """A NUL character in any setting, or a path setting longer than any path can be, named as the setting: the
    GUI's guard covers its boxes, a config file reached the CLI's checks and gave `embedded null byte` and
    `File name too long` tracebacks (docs/reliability.md row 37b)."""
    from loratrainer.config.foreign_paths import PATH_SETTINGS

    for group, values in config.model_dump().items():
        for name, value in values.items() if isinstance(values, dict) else ():
            if not isinstance(value, str):
                continue
            setting = f"{group}.{name}"
            if "\0" in value:
                msg = Msg.of("config_file.nul_in_setting", setting=Label(setting))
            elif setting in PATH_SETTINGS and len(os.fsencode(value)) > MAX_PATH_BYTES:
                msg = Msg.of("config_file.path_too_long", setting=Label(setting), size=len(os.fsencode(value)),
                             limit=MAX_PATH_BYTES)
            else:
                continue
            raise ConfigError(Msg.of("config_file.not_valid", path=source, detail=msg))


def validation_fields(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as UserError.fields: one per bad setting (path, type, ctx, input, msg)."""
    return [{"path": ".".join(str(p) for p in e["loc"]), "type": e["type"], "ctx": dict(e.get("ctx") or {}),
             "input": e.get("input"), "msg": e["msg"].removeprefix("Value error, ")} for e in exc.errors()]


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        lines.append(f"{loc}: {msg}" + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err and not isinstance(err["input"], dict) else ""))
    return "; ".join(lines)


def _refuse_booleans_as_numbers(data: dict[str, Any], model: type[BaseModel], source: str) -> None:
    """`"epoch": true` would validate as 1 (pydantic's lax mode): a boolean where a number belongs is an error."""
    for section, values in data.items():
        group = getattr(model.model_fields.get(section), "annotation", None)
        if not isinstance(values, dict) or not (isinstance(group, type) and issubclass(group, BaseModel)):
            continue
        for name, value in values.items():
            field = group.model_fields.get(name)
            if isinstance(value, bool) and field is not None and field.annotation in (int, float, int | None, float | None):
                msg = Msg.of("config_file.not_a_number", setting=Label(f"{section}.{name}"), value=json.dumps(value))
                raise ConfigError(Msg.of("config_file.not_valid", path=source, detail=msg))


def _read_limited(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_CONFIG_BYTES. O_NONBLOCK: opening a FIFO must not wait for a
    writer (that would hang the GUI endpoint for every user); fstat then refuses it and any device."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(Msg.of("config_file.not_found", path=str(path))) from None
    except IsADirectoryError:
        raise ConfigError(Msg.of("config_file.not_regular", path=str(path))) from None
    except OSError as exc:
        raise ConfigError(Msg.of("config_file.not_valid", path=str(path), detail=exc.strerror or type(exc).__name__)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which raised IsADirectoryError for a folder
        os.close(fd)
        raise ConfigError(Msg.of("config_file.not_regular", path=str(path)))
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(Msg.of("config_file.too_large", path=str(path), limit=MAX_CONFIG_BYTES // (1024 * 1024)))
    return data


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object from a regular file of at most MAX_CONFIG_BYTES; anything else raises ConfigError."""
    path = Path(path)
    if "\0" in str(path) or len(os.fsencode(path)) > 4096:
        raise ConfigError(Msg.of("config_file.not_valid", path=str(path)[:200], detail=Msg.of("config_file.detail.bad_path")))
    raw = _read_limited(path)
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(Msg.of("config_file.not_text", path=str(path))) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(Msg.of("config_file.bad_json", path=str(path), line=exc.lineno, column=exc.colno, detail=exc.msg)) from None
    except RecursionError:  # a 100,000-deep nest of [ or {
        raise ConfigError(Msg.of("config_file.not_valid", path=str(path), detail=Msg.of("config_file.detail.too_deep"))) from None
    except ValueError as exc:  # an integer of more than 4300 digits (Python's int-from-text limit)
        raise ConfigError(Msg.of("config_file.not_valid", path=str(path), detail=str(exc)[:100])) from None
    if not isinstance(data, dict):
        raise ConfigError(Msg.of("config_file.not_object", path=str(path)))
    return data


def load_config(path: str | Path) -> TrainingConfig:
    """Load one of our JSON config/preset files. Malformed JSON or invalid values raise ConfigError."""
    return config_from_dict(read_json_object(path), str(path))


def config_to_json(config: TrainingConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def save_config(config: TrainingConfig, path: str | Path) -> None:
    """Write atomically, so that a crash never leaves half a preset."""
    atomic_write(path, config_to_json(config))
