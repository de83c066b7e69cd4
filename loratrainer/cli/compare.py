"""`loratrainer compare FILE_OR_RUN_DIR... --weights 0,0.5,1 --prompt TEXT -o grid.png`: an epoch x LoRA-weight
grid on the run's base model, with a JSON sidecar."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "cli.compare.not_run_folder": "--run: {path} is not a run folder",
    "cli.compare.no_model": "no base model: give --model (the files' run folder was not found)",
    "cli.compare.no_prompt": "give a prompt with --prompt TEXT",
    "cli.compare.not_png": "-o must name a .png file",
    "cli.compare.exists": "{path} exists: choose another name or pass --overwrite",
    "cli.compare.cannot_write": "cannot write {path}: {detail}",
    "cli.compare.wrote": "wrote {path} and {json} ({count} images in {seconds} s)",
})


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="render LoRA files (every saved epoch of a run) at several weights side by side, with a fixed seed",
        description="One row per LoRA file (a run folder gives every file it saved) and prompt, one column per weight. Weight 0 "
        "is the base model with the LoRA switched off, so that column is the same image in every row. Writes the PNG and "
        "a JSON sidecar (files, weights, prompts, seed, sampler, steps).",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_RUN_DIR", help="LoRA .safetensors files and/or run folders")
    p.add_argument("--weights", default="0,0.5,0.75,1", help="comma-separated LoRA weights (default 0,0.5,0.75,1)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; default: the run's first sample prompt)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--seed", type=int, default=1234, help="the seed of every cell (default 1234)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--width", type=int, default=None, help="default: the run's resolution, else 512")
    p.add_argument("--height", type=int, default=None, help="default: the run's resolution, else 512")
    p.add_argument("--cfg", type=float, default=7.0, help="guidance scale (default 7)")
    p.add_argument("--sampler", default=None, help="sampler (default: the run's sample sampler, else euler_a)")
    p.add_argument("--model", default=None, help="base model (default: the run's)")
    p.add_argument("--run", dest="run_dir", default=None, metavar="RUN_DIR",
                   help="take the base model, VAE, clip skip and sampler from this run folder (default: the run that wrote the files)")
    p.add_argument("-o", "--output", required=True, help="the PNG to write (the sidecar is the same name with .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--progress", default=None, help=argparse.SUPPRESS)  # JSON lines for the GUI
    p.set_defaults(run=run)


def build_request(args: argparse.Namespace):
    from loratrainer.compare.inputs import check_numbers, first_sample_prompt, parse_weights, resolve
    from loratrainer.compare.weight_grid import GridRequest
    from loratrainer.config.samplers import canonical_sampler

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None:
        from loratrainer.compare.inputs import is_run_dir

        if not is_run_dir(run_dir):
            raise UserError(Msg.of("cli.compare.not_run_folder", path=str(run_dir)))
    inputs = resolve(args.inputs, run_dir)
    config = inputs.config
    if run_dir is not None:
        from loratrainer.compare.inputs import run_config

        config = run_config(run_dir)
    model = args.model or (config.model.pretrained_model_name_or_path if config else "")
    if not model:
        raise UserError(Msg.of("cli.compare.no_model"))
    prompts = [p for p in args.prompt if p.strip()] or first_sample_prompt(config)
    if not prompts:
        raise UserError(Msg.of("cli.compare.no_prompt"))
    # the run's resolution by default: an SDXL LoRA trained at 1024 says little at SD1.5's 512
    width, height = config.buckets.resolution if config else (512, 512)
    width, height = (width if args.width is None else args.width), (height if args.height is None else args.height)
    check_numbers(steps=args.steps, width=width, height=height, cfg=args.cfg)
    sampler = args.sampler or (config.sampling.sample_sampler if config else "euler_a")
    try:
        sampler = canonical_sampler(sampler)
    except (KeyError, ValueError) as exc:
        raise UserError(Msg.of("cli.bad_option", option="--sampler", detail=str(exc))) from None
    return GridRequest(
        files=inputs.files, labels=inputs.labels, weights=parse_weights(args.weights), prompts=prompts, model=model,
        seed=args.seed, steps=args.steps, width=width, height=height, cfg_scale=args.cfg, sampler=sampler,
        negative_prompt=args.negative, vae=config.model.vae if config and not args.model else "",
        clip_skip=config.model.clip_skip if config else 1, v_parameterization=bool(config and config.model.v_parameterization),
        model_family=config.model.model_family if config and not args.model else "auto",
        extra=inputs.validation(),
    )


def run(args: argparse.Namespace) -> int:
    target = Path(args.output).expanduser()
    if target.suffix.lower() != ".png":
        raise UserError(Msg.of("cli.compare.not_png"))
    if target.exists() and not args.overwrite:
        raise UserError(Msg.of("cli.compare.exists", path=str(target)))
    request = build_request(args)
    report = _reporter(args.progress)
    report({"phase": "loading", "done": 0, "total": request.cells})
    from loratrainer.compat import hide_broken_torchvision

    hide_broken_torchvision()
    from loratrainer.compare.weight_grid import render_grid

    started = time.monotonic()

    def progress(done: int, total: int, what: str) -> None:
        report({"phase": "rendering", "done": done, "total": total, "what": what})
        print(f"[{done}/{total}] {what}", file=sys.stderr)

    try:
        render_grid(request, target, progress)
    except OSError as exc:
        raise UserError(Msg.of("cli.compare.cannot_write", path=str(target), detail=str(exc.strerror or exc))) from None
    report({"phase": "done", "done": request.cells, "total": request.cells, "path": str(target)})
    print(Msg.of("cli.compare.wrote", path=str(target), json=target.with_suffix(".json").name, count=request.cells,
                 seconds=f"{time.monotonic() - started:.0f}"))
    return 0


def _reporter(path: str | None):
    if not path:
        return lambda record: None
    fh = open(path, "a", encoding="utf-8")

    def report(record: dict) -> None:
        fh.write(json.dumps(record) + "\n")
        fh.flush()

    return report
