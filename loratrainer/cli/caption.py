"""`loratrainer caption DIR`: caption a folder with BLIP, GIT or a WD14 tagger, or edit its captions.

Existing captions are kept unless --overwrite (which backs them up first); a folder where two images share a
stem is refused. Torch, transformers and onnxruntime are imported only when a model is loaded.
"""

from __future__ import annotations

import argparse
import sys

from loratrainer.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "caption",
        help="write captions for a folder of images (BLIP, GIT, WD14 tagger, fixed text) or edit them",
        description="Caption every image in DIR that has no caption yet. Existing captions are kept unless "
        "--overwrite, which first copies them to DIR/.caption-backups/<time>/.",
    )
    p.add_argument("folder", metavar="DIR", help="the image folder (e.g. img/10_mydog)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--captioner", choices=["blip", "git", "wd14"], default="blip", help="the model (default blip)")
    mode.add_argument("--basic", metavar="TEXT", help="write this fixed text as every caption (no model)")
    mode.add_argument("--find", metavar="TEXT", help="replace TEXT with --replace in every existing caption")
    mode.add_argument("--add-to-existing", action="store_true",
                      help="add --prefix/--postfix to every existing caption (no model)")
    p.add_argument("--replace", metavar="TEXT", default=None, help="the replacement for --find ('' deletes)")
    p.add_argument("--regex", action="store_true", help="--find is a regular expression")
    p.add_argument("--model", help="hub id or local folder (default: the captioner's usual model)")
    p.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
    p.add_argument("--prefix", default="", help="text put before every caption, joined with a space")
    p.add_argument("--postfix", default="", help="text put after every caption, joined with a space")
    p.add_argument("--overwrite", action="store_true", help="replace existing captions (after backing them up)")
    p.add_argument("--recursive", action="store_true", help="also caption images in subfolders")
    p.add_argument("--batch-size", type=int, default=1, help="images per model call (default 1)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: the GPU when there is one)")
    g = p.add_argument_group("BLIP and GIT")
    g.add_argument("--no-beam-search", dest="beam_search", action="store_false",
                   help="BLIP: sample with --top-p instead of beam search")
    g.add_argument("--num-beams", type=int, default=1, help="BLIP: beams for beam search (default 1)")
    g.add_argument("--top-p", type=float, default=0.9, help="BLIP: nucleus sampling top_p (default 0.9)")
    g.add_argument("--min-length", type=int, default=5, help="BLIP: minimum caption length in tokens (default 5)")
    g.add_argument("--max-length", type=int, default=None, help="maximum caption length in tokens (BLIP 75, GIT 50)")
    t = p.add_argument_group("WD14 tagger")
    t.add_argument("--general-threshold", type=float, default=0.35, help="general tag threshold (default 0.35)")
    t.add_argument("--character-threshold", type=float, default=0.85, help="character tag threshold (default 0.85)")
    t.add_argument("--thresholds", type=float, nargs=2, metavar=("GENERAL", "CHARACTER"), help="both thresholds")
    t.add_argument("--undesired-tags", default="", help="comma-separated tags never to write")
    t.add_argument("--tag-separator", default=", ", help="between tags, prefix and postfix (default ', ')")
    t.add_argument("--include-rating", action="store_true", help="start with the most likely rating tag")
    t.add_argument("--keep-underscores", action="store_true", help="write long_hair instead of long hair")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.replace is not None and args.find is None:
        raise UserError("--replace needs --find")
    if args.find is not None:
        return _edit_existing(args)
    if args.add_to_existing:
        return _edit_existing(args)
    return _caption(args)


def captioner_options(args: argparse.Namespace):
    from loratrainer.caption.base import BlipOptions, FixedTextOptions, GitOptions, TaggerOptions

    model = {"model": args.model} if args.model else {}
    device = {"device": args.device} if args.device else {}
    if args.basic is not None:
        return FixedTextOptions(args.basic)
    if args.captioner == "git":
        return GitOptions(**model, **device, **({} if args.max_length is None else {"max_length": args.max_length}))
    if args.captioner == "wd14":
        general, character = args.thresholds or (args.general_threshold, args.character_threshold)
        undesired = tuple(t.strip() for t in args.undesired_tags.split(",") if t.strip())
        return TaggerOptions(**model, **device, general_threshold=general, character_threshold=character,
                             undesired_tags=undesired, tag_separator=args.tag_separator,
                             include_rating=args.include_rating, replace_underscores=not args.keep_underscores)
    return BlipOptions(**model, **device, beam_search=args.beam_search, num_beams=args.num_beams, top_p=args.top_p,
                       min_length=args.min_length, max_length=75 if args.max_length is None else args.max_length)


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
            print(f"loading {model.model} ...", file=sys.stderr)

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
            raise UserError("--find needs --replace (use --replace '' to delete the text)")
        report = basic.find_replace(args.folder, args.find, args.replace, regex=args.regex, **common)
    else:
        if not (args.prefix or args.postfix):
            raise UserError("--add-to-existing needs --prefix and/or --postfix")
        report = basic.add_prefix_postfix(args.folder, args.prefix, args.postfix, **common)
    print("\n".join(report.summary()))
    return 0
