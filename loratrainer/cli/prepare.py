"""`loratrainer prepare SRC DEST --name NAME`: make a Kohya-style project from a folder of images (copies)."""

from __future__ import annotations

import argparse
import shlex

from loratrainer.messages import Msg, define

define({
    "cli.prepare.created": "created {path}  ({images} images, {captions} captions copied, {repeats} repeats)",
    "cli.prepare.left_out": "left out {name}: {why}",
    "cli.prepare.folder_created": "created {path}",
    "cli.prepare.folder_kept": "kept    {path}",
    "cli.prepare.suggested": "repeats {repeats} suggested for {images} images (pass --repeats to choose; see docs/dataset.md)",
    "cli.prepare.uncaptioned": "{count} image(s) have no caption: caption them with `{command}` or they train with the caption {caption!r}",
    "cli.prepare.reg_caption": "note: uncaptioned regularisation images train with the caption {name!r}; give --class (e.g. --class dog) so they train as the class instead of your concept",
    "cli.prepare.next": "next: {command}",
})


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="copy a folder of images (and captions) into a new project: image/<repeats>_<name>/, log/, model/",
        description="Create DEST/image/<repeats>_<name>/ (and DEST/reg/<reg-repeats>_<name>/ with --reg), DEST/log/ and "
        "DEST/model/, COPYING the images and their caption files. Nothing is moved or overwritten: an existing "
        "concept folder is refused, and so are SRC == DEST and one inside the other.",
    )
    p.add_argument("src", metavar="SRC", help="folder with the training images (and optional caption files)")
    p.add_argument("dest", metavar="DEST", help="the project folder to create or add to")
    p.add_argument("--name", required=True, help="the concept name: the folder's name part and the caption of uncaptioned images")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="repeats per image per epoch (default: suggested from the image count: 150 for 10 or fewer, "
                   "100 for 20 or more, in between linearly)")
    p.add_argument("--class", dest="class_name", metavar="CLASS",
                   help="the class the concept belongs to (e.g. dog): the training folder becomes <repeats>_<name> <class> "
                   "and the regularisation folder <reg-repeats>_<class>, as Kohya's folder tool makes them")
    p.add_argument("--reg", metavar="REG_DIR", help="folder with regularisation images (give --class too)")
    p.add_argument("--reg-repeats", type=int, default=1, metavar="N", help="repeats of the regularisation images (default 1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from loratrainer.data.prepare import prepare_project

    r = prepare_project(args.src, args.dest, args.name, args.repeats, args.reg, args.reg_repeats, class_name=args.class_name)
    for folder in [r.train] + ([r.reg] if r.reg else []):
        print(Msg.of("cli.prepare.created", path=str(folder.path), images=folder.images, captions=folder.captions, repeats=folder.repeats))
    for folder in [r.train] + ([r.reg] if r.reg else []):
        for path, why in folder.left_out:
            print(Msg.of("cli.prepare.left_out", name=path.name, why=why))
    for sub in ("log", "model"):
        print(Msg.of("cli.prepare.folder_created" if r.project / sub in r.created else "cli.prepare.folder_kept", path=str(r.project / sub)))
    if r.repeats_suggested:
        print(Msg.of("cli.prepare.suggested", repeats=r.train.repeats, images=r.train.images))
    if r.train.captions < r.train.images:
        print(Msg.of("cli.prepare.uncaptioned", count=r.train.images - r.train.captions, caption=r.train.path.name.split("_", 1)[1],
                     command=f"loratrainer caption {shlex.quote(str(r.train.path))}"))
    if r.reg and not args.class_name:
        print(Msg.of("cli.prepare.reg_caption", name=args.name.strip()))
    check = f"loratrainer check {shlex.quote(str(r.project / 'image'))}"
    if r.reg:
        check += f" --reg {shlex.quote(str(r.project / 'reg'))}"
    print(Msg.of("cli.prepare.next", command=check))
    return 0
