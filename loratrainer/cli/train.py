"""`loratrainer train --config FILE [--set key=value ...] [--print-command]`: check, launch, follow."""

from __future__ import annotations

import argparse
import sys

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({"cli.train.fp32_here": "note: mixed precision {precision} asked, no CUDA GPU on this machine: the run will train in fp32"})


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
        raise UserError(Msg.of("cli.bad_option", option="--set", detail=str(exc))) from None
    config = _load(args.config, overrides)  # the overrides first, then the checks: a --set value can mend the file
    for note in config.note_messages():
        print(Msg.of("cli.note", text=note), file=sys.stderr)
    warnings: list = []  # launch.start.start_warnings: what the GUI asks about before Start
    config = preflight(config, warnings)  # --print-command too: the same checks as a real start, so it shows a command that would run
    for warning in warnings:  # said, not asked: a terminal run (a script, a queue) has no one to answer; refusals stop it above
        print(Msg.of("cli.warning", text=warning), file=sys.stderr)
    if args.print_command:
        run_dir = run_folder(config, "<YYYYmmdd-HHMMSS>")
        print(format_command(build_command(config, run_dir)))
        from loratrainer.launch.precision import precision_here

        if precision_here(config) != config.precision.mixed_precision:
            print(Msg.of("cli.train.fp32_here", precision=config.precision.mixed_precision), file=sys.stderr)
        return 0
    from loratrainer.run.owner import own_runs_started_here

    own_runs_started_here()  # killed (kill -9), this command takes its run with it: the trainer watches for it
    process = start_run(config, check=False)
    print(Msg.of("cli.run_folder", path=str(process.run_dir)), file=sys.stderr)
    return follow(process, said=config.summary())  # its notes and warnings were said above: the trainer sends them again


def _load(path: str, overrides: dict):
    from loratrainer.config.presets import load_any_config

    config, report = load_any_config(path, overrides)
    if report.format != "loratrainer":  # a foreign file: say what was converted, coerced or left out
        for line in report.lines():
            print(Msg.of("cli.import", text=line), file=sys.stderr)
    return config
