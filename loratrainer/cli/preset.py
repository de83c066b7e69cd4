"""`loratrainer preset import-kohya | export-kohya | list | show`: presets and Kohya GUI config files."""

from __future__ import annotations

import argparse
from pathlib import Path

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "cli.preset.exists": "{path} exists; use --force to replace it",
    "cli.preset.is_folder": "{path} is a folder; give a file name",
    "cli.preset.appeared": "{path} appeared meanwhile and was kept; use --force to replace it",
    "cli.preset.cannot_write": "cannot write {path}: {reason}",
    "cli.preset.blocked": "{blocker} is a file, not a folder",
    "cli.preset.kept_old": "Kept the old {path} as {backup}",
    "cli.preset.wrote": "Wrote {path}",
    "cli.preset.note": "Note: {text}",
    "cli.preset.written_out": "Written out: {item}",
    "cli.preset.not_exported": "NOT EXPORTED: {item}",
    "cli.preset.kohya_keys": " ({count} Kohya keys)",
    "cli.preset.shipped": "shipped", "cli.preset.user": "user",
    "cli.preset.folder": "User presets folder: {path}",
    "cli.preset.differs": "Settings that differ from the defaults:",
})


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preset",
        help="list and show presets; convert Kohya GUI configs to ours and back",
        description="Presets and Kohya GUI config files. Every command that takes a config file also accepts a Kohya GUI config.",
    )
    sub = parser.add_subparsers(dest="preset_command", required=True, metavar="ACTION")

    p = sub.add_parser("import-kohya", help="convert a Kohya GUI config JSON to our config JSON")
    p.add_argument("source", help="the Kohya GUI config (.json)")
    p.add_argument("-o", "--output", required=True, help="our config file to write")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists (the old one is kept as .bak)")
    p.set_defaults(run=run_import)

    p = sub.add_parser("export-kohya", help="convert our config (or a Kohya file) to a Kohya GUI config JSON")
    p.add_argument("source", help="our config or preset (.json); a Kohya GUI config is accepted too")
    p.add_argument("-o", "--output", required=True, help="the Kohya GUI config file to write")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists (the old one is kept as .bak)")
    p.set_defaults(run=run_export)

    p = sub.add_parser("list", help="list shipped and user presets")
    p.set_defaults(run=run_list)

    p = sub.add_parser("show", help="show a preset's (or any config file's, Kohya GUI files too) settings that differ from the defaults")
    p.add_argument("name", help="preset name, file stem, or the path of a preset, config or Kohya GUI config file")
    p.set_defaults(run=run_show)


def _refuse_existing(output: str, force: bool) -> Path:
    path = Path(output)
    if path.exists() and not force:
        raise UserError(Msg.of("cli.preset.exists", path=str(path)))
    if path.is_dir():
        raise UserError(Msg.of("cli.preset.is_folder", path=str(path)))
    return path


def _write(output: Path, text: str, force: bool) -> None:
    from loratrainer.files import atomic_write
    from loratrainer.config.presets import backup_file

    try:
        backup = backup_file(output) if force else None
        atomic_write(output, text, overwrite=force)
    except OSError as exc:
        if isinstance(exc, FileExistsError) and output.is_file():
            raise UserError(Msg.of("cli.preset.appeared", path=str(output))) from None
        blocker = next((p for p in output.parents if p.exists() and not p.is_dir()), None)
        reason = Msg.of("cli.preset.blocked", blocker=str(blocker)) if blocker else f"{exc.strerror or exc} ({exc.filename or output})"
        raise UserError(Msg.of("cli.preset.cannot_write", path=str(output), reason=reason)) from None
    if backup:
        print(Msg.of("cli.preset.kept_old", path=str(output), backup=str(backup)))
    print(Msg.of("cli.preset.wrote", path=str(output)), end="")


def _print_report(lines: list[str]) -> None:
    for line in lines:
        print(line)


def run_import(args: argparse.Namespace) -> int:
    from loratrainer.config import config_to_json
    from loratrainer.config.presets import load_any_config

    output = _refuse_existing(args.output, args.force)
    config, report = load_any_config(args.source)  # raises before anything is written
    _print_report(report.lines())
    for note in config.summary():
        print(Msg.of("cli.preset.note", text=note))
    _write(output, config_to_json(config), args.force)
    print()
    return 0


def run_export(args: argparse.Namespace) -> int:
    from loratrainer.config.kohya import export_kohya, kohya_to_json
    from loratrainer.config.presets import load_any_config

    output = _refuse_existing(args.output, args.force)
    config, report = load_any_config(args.source)
    _print_report(report.lines())
    data, export_report = export_kohya(config)
    for item in export_report.migrated:
        print(Msg.of("cli.preset.written_out", item=item))
    for item in export_report.unsupported:
        print(Msg.of("cli.preset.not_exported", item=item))
    _write(output, kohya_to_json(data), args.force)
    print(Msg.of("cli.preset.kohya_keys", count=len(data)))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from loratrainer.config.presets import list_presets, user_preset_dir

    presets = list_presets()
    for info in presets:
        origin = Msg.of("cli.preset.shipped" if info.shipped else "cli.preset.user")
        print(f"{info.path.stem:<24} {info.name} [{origin}]")
        if info.description:
            print(f"{'':<24} {info.description}")
    print(Msg.of("cli.preset.folder", path=str(user_preset_dir())))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from loratrainer.config import PRESET_HEADER, TrainingConfig, field_specs, get_value
    from loratrainer.config.presets import find_preset, load_any_config, read_json_object

    path = find_preset(args.name)
    config, report = load_any_config(path)  # a preset, a full config of ours or a Kohya GUI file
    header = read_json_object(path).get(PRESET_HEADER) if report.format == "loratrainer" else None
    header = header if isinstance(header, dict) else {}
    print(f"{header.get('name') or path.stem} ({path})")
    if header.get("description"):
        print(header["description"])
    if report.format == "kohya":
        _print_report(report.lines())
    defaults = TrainingConfig()
    print(Msg.of("cli.preset.differs"))
    for spec in field_specs():
        value = get_value(config, spec.path)
        if value != get_value(defaults, spec.path):
            print(f"  {spec.path} = {value!r}")
    for note in config.summary():
        print(f"Note: {note}")
    return 0
