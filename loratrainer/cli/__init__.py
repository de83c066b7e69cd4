"""`loratrainer <command>`: one module per sub-command in this package.

Each module defines `add_parser(subparsers)` (registering itself with `set_defaults(run=...)`) and keeps heavy
imports (torch, diffusers, gradio) inside its run function, so `loratrainer check` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "cli.bad_option": "{option}: {detail}",
    "cli.interrupted": "interrupted",
    "cli.note": "note: {text}",
    "cli.warning": "warning: {text}",
    "cli.import": "import: {text}",
    "cli.run_folder": "run folder: {path}",
})

# The order in which commands are listed by --help: the order of the work.
ORDER = ["gui", "prepare", "check", "caption", "train", "compare", "preset"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loratrainer",
        description="Train Stable Diffusion 1.5 LoRAs. Every command that takes a config file also accepts a Kohya GUI config.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(Msg.of("cli.interrupted"), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `loratrainer check --json | head`: the reader left, which is not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
