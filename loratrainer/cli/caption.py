"""`loratrainer caption DIR`: caption a folder with BLIP, GIT or a WD14 tagger, or edit its captions.

Existing captions are kept unless --overwrite (which backs them up first); a folder where two images share a
stem is refused. Torch, transformers and onnxruntime are imported only when a model is loaded.
"""

from __future__ import annotations

import argparse
import sys

from loratrainer.caption.base import METHODS, MODEL_METHODS, OptionSpec, option_specs, options_from_values
from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "cli.caption.replace_needs_find": "--replace needs --find",
    "cli.caption.find_needs_replace": "--find needs --replace (use --replace '' to delete the text)",
    "cli.caption.add_needs_text": "--add-to-existing needs --prefix and/or --postfix",
    "cli.caption.loading": "loading {model} ...",
})


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "caption",
        help="write captions for a folder of images (BLIP, GIT, WD14 tagger, fixed text) or edit them",
        description="Caption every image in DIR that has no caption yet. Existing captions are kept unless "
        "--overwrite, which first copies them to DIR/.caption-backups/<time>/.",
    )
    p.add_argument("folder", metavar="DIR", help="the image folder (e.g. img/10_mydog)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--captioner", choices=list(MODEL_METHODS), default="blip", help="the model (default blip)")
    mode.add_argument("--basic", metavar="TEXT", help="write this fixed text as every caption (no model)")
    mode.add_argument("--find", metavar="TEXT", help="replace TEXT with --replace in every existing caption")
    mode.add_argument("--add-to-existing", action="store_true",
                      help="add --prefix/--postfix to every existing caption (no model)")
    p.add_argument("--replace", metavar="TEXT", default=None, help="the replacement for --find ('' deletes)")
    p.add_argument("--regex", action="store_true", help="--find is a regular expression")
    p.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--prefix", default="", help="text put before every caption, joined with a space")
    p.add_argument("--postfix", default="", help="text put after every caption, joined with a space")
    p.add_argument("--overwrite", action="store_true", help="replace existing captions (after backing them up)")
    p.add_argument("--recursive", action="store_true", help="also caption images in subfolders")
    p.add_argument("--batch-size", type=int, default=1, help="images per model call (default 1)")
    _add_captioner_flags(p)
    p.set_defaults(run=run)


_GROUPS = {"blip": "BLIP and GIT", "git": "BLIP and GIT", "wd14": "WD14 tagger"}
_NAMES = {"blip": "BLIP", "git": "GIT", "wd14": "WD14"}


def _add_captioner_flags(p: argparse.ArgumentParser) -> None:
    """One flag per declared captioner option (caption/base.py); an option several captioners have (--model,
    --max-length) is one flag whose default is each captioner's own. Every flag defaults to None: not given."""
    seen: dict[str, list[tuple[str, object]]] = {}
    specs: dict[str, tuple[str, OptionSpec]] = {}
    for method in MODEL_METHODS:
        for spec in option_specs(METHODS[method]):
            if spec.cli is not None:
                seen.setdefault(spec.flag, []).append((method, spec.default))
                specs.setdefault(spec.flag, (method, spec))
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, (method, spec) in specs.items():
        owners = seen[flag]
        shared = len(owners) == len(MODEL_METHODS)  # --model, --device: on the command itself
        target = p if shared else groups.setdefault(_GROUPS[method], p.add_argument_group(_GROUPS[method]))
        text = spec.cli or ""  # (never empty: `specs` holds only the options with a CLI help)
        if spec.kind in ("int", "float"):
            defaults = {d for _, d in owners}
            text += f" (default {owners[0][1]})" if len(defaults) == 1 else " (" + ", ".join(f"{_NAMES[m]} {d}" for m, d in owners) + ")"
        if spec.kind == "bool":  # the flag sets the opposite of the default
            target.add_argument(flag, dest=spec.name, action="store_const", const=not spec.default, default=None, help=text)
        else:
            kind = {"int": int, "float": float}.get(spec.kind, str)
            target.add_argument(flag, dest=spec.name, type=kind, default=None, help=text)
        if flag == "--character-threshold":
            target.add_argument("--thresholds", type=float, nargs=2, metavar=("GENERAL", "CHARACTER"), help="both thresholds")


def run(args: argparse.Namespace) -> int:
    if args.replace is not None and args.find is None:
        raise UserError(Msg.of("cli.caption.replace_needs_find"))
    if args.find is not None:
        return _edit_existing(args)
    if args.add_to_existing:
        return _edit_existing(args)
    return _caption(args)


def captioner_options(args: argparse.Namespace):
    if args.basic is not None:
        return METHODS["fixed"](args.basic)
    values = dict(vars(args))
    if args.thresholds:
        values["general_threshold"], values["character_threshold"] = args.thresholds
    return options_from_values(METHODS[args.captioner], values)


def _caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from loratrainer.caption.base import FixedTextOptions
    from loratrainer.caption.run import CaptionRunOptions, caption_folder

    options = CaptionRunOptions(args.folder, args.caption_extension, args.prefix, args.postfix, args.overwrite,
                                args.recursive, args.batch_size)
    chosen = captioner_options(args)
    bar: list[tqdm] = []

    def loading(model) -> None:
        # Loading a large model takes a while (and a download on first use): say so before the bar appears.
        if not isinstance(model, FixedTextOptions):
            print(Msg.of("cli.caption.loading", model=model.model), file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, unit="image", desc="captioning", file=sys.stderr))
        bar[0].update(done - bar[0].n)

    try:
        report = caption_folder(options, chosen, progress=progress, loading=loading)
    finally:
        if bar:
            bar[0].close()
    print("\n".join(report.summary()))
    return 0


def _edit_existing(args: argparse.Namespace) -> int:
    from loratrainer.caption import basic

    common = {"caption_extension": args.caption_extension, "recursive": args.recursive}
    if args.find is not None:
        if args.replace is None:
            raise UserError(Msg.of("cli.caption.find_needs_replace"))
        report = basic.find_replace(args.folder, args.find, args.replace, regex=args.regex, **common)
    else:
        if not (args.prefix or args.postfix):
            raise UserError(Msg.of("cli.caption.add_needs_text"))
        report = basic.add_prefix_postfix(args.folder, args.prefix, args.postfix, **common)
    print("\n".join(report.summary()))
    return 0
