"""`loratrainer check DIR`: check a dataset before training; exit code 1 when training would be refused.

Only the data layer and the config schema are imported (no torch), so the check starts in well under a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "cli.check.processes": "--num-processes must be at least 1",
    "cli.check.invalid_setting": "invalid setting: {detail}",
    "cli.check.no_folder": "no dataset folder: give DIR or a --config that sets train_data_dir",
})

EXIT_REFUSED = 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="check a dataset: folders, images, captions, buckets and the exact step count",
        description="Check the dataset that training would use and print one report: every problem with its file "
        "and fix, the buckets and the exact number of steps. Exit code 0 = ready, 1 = training would be refused, "
        "2 = the command itself could not run.",
    )
    p.add_argument("folder", metavar="DIR", nargs="?", help="train_data_dir: the PARENT of the <repeats>_<name> folders "
                   "(default: the config's)")
    p.add_argument("--config", metavar="FILE", help="a loratrainer config or preset, or a Kohya GUI config .json")
    p.add_argument("--reg", metavar="DIR", help="reg_data_dir: regularisation images, same <repeats>_<name> layout")
    p.add_argument("--batch-size", type=int, metavar="N", help="train_batch_size")
    p.add_argument("--epochs", type=int, metavar="N", help="epoch")
    p.add_argument("--max-train-steps", type=int, metavar="N", help="max_train_steps (0 = use the epochs)")
    p.add_argument("--gradient-accumulation-steps", type=int, metavar="N", help="gradient_accumulation_steps")
    p.add_argument("--num-processes", type=int, metavar="N", help="training processes (GPUs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting, e.g. --set bucket_no_upscale=false")
    p.add_argument("--json", action="store_true", help="print the report as JSON (fields: docs/dataset.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from loratrainer.data.check import check_dataset
    from loratrainer.launch.input_checks import resolve_model_family

    config = resolve_model_family(_config(args))[0]  # the bucket rule of the model's family, as Start applies it
    report = check_dataset(config, args.num_processes)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(report.format_text())
    return 0 if report.ok else EXIT_REFUSED


def _config(args: argparse.Namespace):
    from loratrainer.config import TrainingConfig, apply_overrides, with_values

    config = _load(args.config, quiet=args.json) if args.config else TrainingConfig()
    values: dict[str, Any] = {}
    for key, value in (
        ("train_data_dir", args.folder),
        ("reg_data_dir", args.reg),
        ("train_batch_size", args.batch_size),
        ("epoch", args.epochs),
        ("max_train_steps", args.max_train_steps),
        ("gradient_accumulation_steps", args.gradient_accumulation_steps),
    ):
        if value is not None:
            values[key] = value
    if args.num_processes is not None and args.num_processes < 1:
        raise UserError(Msg.of("cli.check.processes"))
    try:
        config = apply_overrides(with_values(config, values), args.set)
    except (ValueError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
        raise UserError(Msg.of("cli.check.invalid_setting", detail=_one_line(exc))) from None
    if not config.folders.train_data_dir:
        raise UserError(Msg.of("cli.check.no_folder"))
    return config


def _load(path: str, quiet: bool):
    """Our config or preset, or a Kohya GUI file; for the latter the import report goes to stderr."""
    from loratrainer.config.presets import load_any_config

    config, imported = load_any_config(path)
    if imported.format == "kohya" and not quiet:
        print("\n".join(imported.lines()), file=sys.stderr)
    return config


def _one_line(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from loratrainer.config import describe_validation_error

        return describe_validation_error(exc)
    return str(exc).strip("'\"")
