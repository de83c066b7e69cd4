"""Our JSON config files: load, save, migrate. Re-exported by `loratrainer.config`: import these names from there.

A file carries `schema_version`; `MIGRATIONS[n]` turns a version-n document into version n+1, so presets written
by older versions keep loading with the same meaning. The schema is imported inside the functions, so this
module and `config` can be imported in either order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from loratrainer.errors import UserError
from loratrainer.files import atomic_write
from pydantic import ValidationError

if TYPE_CHECKING:
    from loratrainer.config import TrainingConfig

Migration = Callable[[dict[str, Any]], dict[str, Any]]
# Add one whenever a field is renamed, moved or changes meaning (and raise config.SCHEMA_VERSION).
MIGRATIONS: dict[int, Migration] = {}

PRESET_HEADER = "preset"  # {"name": ..., "description": ...} in a preset file: not a setting (see presets.py)


class ConfigError(UserError, ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    from loratrainer import config as schema

    current = schema.SCHEMA_VERSION
    version = data.get("schema_version", current)
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"schema_version {version!r} is not a valid version number")
    if version > current:
        raise ConfigError(
            f"this file was written by a newer loratrainer (schema {version}; this one reads up to {current}): update loratrainer"
        )
    while version < current:
        data = MIGRATIONS[version](dict(data))
        version += 1
        data["schema_version"] = version
    return data


def config_from_dict(data: dict[str, Any], source: str = "config") -> TrainingConfig:
    """Our JSON (full config or partial preset; missing settings take their defaults) -> a validated config."""
    from loratrainer.config import TrainingConfig

    data = dict(data)
    header = data.pop(PRESET_HEADER, None)
    if header is not None and not isinstance(header, dict):
        raise ConfigError(f"{source}: {PRESET_HEADER}: expected an object with name and description")
    try:
        return TrainingConfig.model_validate(migrate(data))
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        lines.append(f"{loc}: {msg}" + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err and not isinstance(err["input"], dict) else ""))
    return "; ".join(lines)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file; a missing file, malformed JSON or a non-object raise ConfigError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (RecursionError, ValueError) as exc:  # nested thousands deep, or an integer of thousands of digits
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise ConfigError(f"{path}: not a usable JSON file ({reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of settings")
    return data


def load_config(path: str | Path) -> TrainingConfig:
    """Load one of our JSON config/preset files. Malformed JSON or invalid values raise ConfigError."""
    return config_from_dict(read_json_object(path), str(path))


def config_to_json(config: TrainingConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def save_config(config: TrainingConfig, path: str | Path) -> None:
    """Write atomically, so that a crash never leaves half a preset."""
    atomic_write(path, config_to_json(config))
