"""`loratrainer train --config FILE [--set key=value ...] [--print-command]`: check, launch, follow."""

from __future__ import annotations

import argparse
import sys

from loratrainer.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a LoRA from a config file (ours or a Kohya GUI one)")
    p.add_argument("--config", required=True, help="our JSON config/preset or a Kohya GUI config file")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set network_dim=16 (repeatable)")
    p.add_argument("--print-command", action="store_true", help="run the checks Start runs, then print the accelerate command that would run, and exit without training")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from loratrainer.config.fields import parse_assignments
    from loratrainer.launch.follow import follow
    from loratrainer.run.files import run_folder
    from loratrainer.launch.start import build_command, format_command, preflight, start_run

    try:
        overrides = parse_assignments(args.assignments)
    except (KeyError, ValueError) as exc:
        raise UserError(f"--set: {exc}") from None
    config = _load(args.config, overrides)  # the overrides first, then the checks: a --set value can mend the file
    for note in config.summary():
        print(f"note: {note}", file=sys.stderr)
    config = preflight(config)  # --print-command too: the same checks as a real start, so it shows a command that would run
    if args.print_command:
        run_dir = run_folder(config, "<YYYYmmdd-HHMMSS>")
        print(format_command(build_command(config, run_dir)))
        from loratrainer.launch.precision import precision_here

        if precision_here(config) != config.precision.mixed_precision:
            print(f"note: mixed precision {config.precision.mixed_precision} asked, no CUDA GPU on this machine: "
                  "the run will train in fp32", file=sys.stderr)
        return 0
    from loratrainer.run.owner import own_runs_started_here

    own_runs_started_here()  # killed (kill -9), this command takes its run with it: the trainer watches for it
    process = start_run(config, check=False)
    print(f"run folder: {process.run_dir}", file=sys.stderr)
    return follow(process, said=config.summary())  # its notes were said above: the trainer sends them again


def _load(path: str, overrides: dict):
    from loratrainer.config.presets import load_any_config

    config, report = load_any_config(path, overrides)
    if report.format != "loratrainer":  # a foreign file: say what was converted, coerced or left out
        for line in report.lines():
            print(f"import: {line}", file=sys.stderr)
    return config
