"""Shipped and user presets, and `load_any_config()`, which reads our JSON or a Kohya GUI file.

Preset format. A preset is one of our JSON config files that lists only the settings it changes, grouped as in
the config, plus a header naming it; every setting it does not list takes its default:

    {
      "schema_version": 1,
      "preset": {"name": "SD1.5 style", "description": "One line the GUI shows."},
      "network": {"network_dim": 32, "network_alpha": 16},
      "optimizer": {"learning_rate": 0.0001}
    }

It loads through the same code as a full config (`config_from_dict`: migrations by schema_version,
unknown keys an error, every value validated), so a preset is valid exactly when it loads. Presets never carry the
user's own paths (folders, base model, VAE, starting LoRA, resume state): `apply_preset()` keeps the user's and
`save_user_preset()` leaves them out. Writing a preset renders it canonically (groups in schema order, keys in
field order, indent 2), so load -> save is byte-identical.

Shipped presets live in the top-level `presets/` folder of the source tree and are installed as package data
under `loratrainer/_presets/` (see `shipped_preset_dir()`); user presets live in $LORATRAINER_PRESET_DIR or
~/.config/loratrainer/presets ($XDG_CONFIG_HOME respected). A user preset never silently replaces another file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratrainer.config.fields import with_values
from loratrainer.config.files import PRESET_HEADER, ConfigError, config_from_dict, read_json_object, refuse_unusable_text
from loratrainer.config.foreign_paths import foreign_kind
from loratrainer.config.kohya import ImportReport, ReportItem, import_kohya, looks_like_kohya
from loratrainer.config.schema import GROUPS, SCHEMA_VERSION, TrainingConfig
from loratrainer.files import atomic_write
from loratrainer.messages import Msg, define

define({"kohya.relative_folder": "{value} was relative to the Kohya file's folder: {path}"})
define({
    "preset.unknown": "no preset named {name!r}; available: {names}",
    "preset.none": "none",
    "preset.unusable_name": "preset name {name!r} has no usable characters",
    "preset.shipped_name": "{name!r} is the name of a shipped preset; choose another name",
    "preset.exists": "a preset named {name!r} exists ({path}); choose another name or confirm replacing it",
})

__all__ = [
    "ImportReport",
    "PresetInfo",
    "USER_FIELDS",
    "apply_preset",
    "backup_file",
    "find_preset",
    "list_presets",
    "load_any_config",
    "load_preset",
    "preset_to_json",
    "read_json_object",
    "save_user_preset",
    "shipped_preset_dir",
    "user_preset_dir",
]

# The user's own paths: a preset neither sets nor replaces them.
USER_FIELDS = (
    "folders.train_data_dir",
    "folders.reg_data_dir",
    "folders.validation_data_dir",
    "folders.output_dir",
    "folders.logging_dir",
    "folders.output_name",
    "model.pretrained_model_name_or_path",
    "model.vae",
    "network.network_weights",
    "saving.resume",
)


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    description: str
    shipped: bool


def shipped_preset_dir() -> Path:
    """The installed package data (loratrainer/_presets) or, in a source checkout, the top-level presets/ folder."""
    package = Path(__file__).resolve().parent.parent  # loratrainer/
    installed = package / "_presets"
    return installed if installed.is_dir() else package.parent / "presets"


def user_preset_dir() -> Path:
    env = os.environ.get("LORATRAINER_PRESET_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "loratrainer" / "presets"


def load_any_config(path: str | Path, overrides: dict | None = None) -> tuple[TrainingConfig, ImportReport]:
    """Our JSON (a config or a preset) or a Kohya GUI config, told apart by content; the report says which.
    `overrides` ({setting path: value}) are applied before the whole is validated (`train --set`)."""
    data = read_json_object(path)
    if looks_like_kohya(data):
        config, report = import_kohya(data, str(path), overrides)
        refuse_unusable_text(config, str(path))  # before a NUL or an endless path reaches os calls
        return _folders_beside(config, report, Path(path)), report
    return config_from_dict(data, str(path), overrides), ImportReport(source=str(path), format="loratrainer")


# the folder settings a Kohya GUI file may hold as relative paths (its GUI ran from its own install folder)
RELATIVE_FOLDER_SETTINGS = ("train_data_dir", "reg_data_dir", "output_dir", "logging_dir")


def _folders_beside(config: TrainingConfig, report: ImportReport, path: Path) -> TrainingConfig:
    """A relative folder in an imported Kohya file (`../../../etc/cron.d` as the logging folder) is resolved
    against the file's own folder, not our working folder, and the import report shows the absolute path before
    a run starts (docs/reliability.md "Paths and faults")."""
    base = path.resolve().parent
    changed = {}
    for name in RELATIVE_FOLDER_SETTINGS:
        value = getattr(config.folders, name)
        if value and not Path(value).expanduser().is_absolute() and not foreign_kind(value):
            changed[name] = os.path.normpath(base / value)
            report.coerced.append(ReportItem.of(f"folders.{name}", "kohya.relative_folder", value=value, path=changed[name]))
    return with_values(config, changed) if changed else config


def _preset_info(path: Path, shipped: bool) -> PresetInfo:
    header = read_json_object(path).get(PRESET_HEADER)
    if not isinstance(header, dict):
        header = {}
    return PresetInfo(str(header.get("name") or path.stem), path, str(header.get("description") or ""), shipped)


def list_presets() -> list[PresetInfo]:
    """Shipped presets first (sorted by file name), then the user's. Unreadable user files are skipped."""
    found: list[PresetInfo] = []
    for folder, shipped in ((shipped_preset_dir(), True), (user_preset_dir(), False)):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                found.append(_preset_info(path, shipped))
            except ConfigError:
                if shipped:
                    raise
    return found


def find_preset(name_or_path: str | Path) -> Path:
    """A preset file by path, by file stem or by its display name (case-insensitive)."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return path
    wanted = str(name_or_path).strip().lower()
    for info in list_presets():
        if wanted in (info.path.stem.lower(), info.name.lower()):
            return info.path
    names = ", ".join(f"{i.path.stem} ({i.name})" for i in list_presets()) or Msg.of("preset.none")
    raise ConfigError(Msg.of("preset.unknown", name=str(name_or_path), names=names))


def load_preset(name_or_path: str | Path) -> TrainingConfig:
    """A preset (shipped or user, by name or path) applied over the defaults."""
    path = find_preset(name_or_path)
    return config_from_dict(read_json_object(path), str(path))


def apply_preset(config: TrainingConfig, preset: TrainingConfig) -> TrainingConfig:
    """The preset's settings with the user's paths (USER_FIELDS) kept from `config`."""
    keep = {path: _get(config, path) for path in USER_FIELDS}
    return with_values(preset, keep)


def preset_to_json(config: TrainingConfig, name: str, description: str = "") -> str:
    """Canonical preset text: the settings that differ from the defaults, without the user's paths."""
    defaults = TrainingConfig().model_dump(mode="json")
    current = config.model_dump(mode="json")
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, PRESET_HEADER: {"name": name, "description": description}}
    for group in GROUPS:
        changed = {
            k: v for k, v in current[group].items() if v != defaults[group][k] and f"{group}.{k}" not in USER_FIELDS
        }
        if changed:
            doc[group] = changed
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def save_user_preset(config: TrainingConfig, name: str, description: str = "", *, overwrite: bool = False) -> Path:
    """Write `config` as a user preset named `name`; an existing preset is replaced only with overwrite=True."""
    stem = re.sub(r"[^\w.-]+", "-", name.strip()).strip("-.")
    if not stem:
        raise ConfigError(Msg.of("preset.unusable_name", name=name))
    if any(info.shipped and stem.lower() == info.path.stem.lower() for info in list_presets()):
        raise ConfigError(Msg.of("preset.shipped_name", name=name))
    path = user_preset_dir() / f"{stem}.json"
    if overwrite:
        backup_file(path)
    try:
        return atomic_write(path, preset_to_json(config, name.strip(), description), overwrite=overwrite)
    except FileExistsError:
        raise ConfigError(Msg.of("preset.exists", name=name, path=str(path))) from None


def backup_file(path: str | Path) -> Path | None:
    """Copy an existing file to `<name>.<YYYYmmdd-HHMMSS>.bak` beside it before it is replaced (docs/reliability.md:
    what a user asks to overwrite is backed up). The suffix keeps backups out of the *.json preset list."""
    path = Path(path)
    if not path.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup, n = path.with_name(f"{path.name}.{stamp}.bak"), 1
    while backup.exists():
        backup, n = path.with_name(f"{path.name}.{stamp}-{n}.bak"), n + 1
    shutil.copy2(path, backup)
    return backup


def _get(config: TrainingConfig, path: str) -> Any:
    group, name = path.split(".")
    return getattr(getattr(config, group), name)
