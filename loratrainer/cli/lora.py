"""`loratrainer lora inspect|merge|merge-into|resize|extract`: the LoRA tools (docs/lora-tools.md).

Outputs are never overwritten: an existing -o is refused. `--json` prints the report as JSON on stdout.
`--progress-json` (used by the GUI, which runs these commands in a subprocess) writes one JSON line per step to
stderr, and an error as one JSON line `{"error": {"code": ..., "params": {...}}}` (before the usual `error: ...`
line) so that the GUI says it in the page's language (tools/messages.py); SIGTERM cancels cleanly: the tool stops
at the next module and leaves no file behind (exit code 10).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from loratrainer.errors import UserError
from loratrainer.tools.messages import message_json, tool_error

EXIT_PROBLEMS = 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lora", help="LoRA tools: inspect, merge, merge into a model, resize, extract",
                              description="Tools for finished LoRA files. Outputs are never overwritten.")
    sub = p.add_subparsers(dest="tool", required=True, metavar="TOOL")

    def common(q, *, report=True):
        if report:
            q.add_argument("--json", action="store_true", help="print the report as JSON")
        q.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)

    q = sub.add_parser("inspect", help="format, base model, modules, rank/alpha, metadata and problems of a LoRA file",
                       description="Describe a LoRA file (Kohya, diffusers/peft or LyCORIS) and list its problems. "
                       "Exit code 0 = no problems found, 1 = problems found, 2 = the file cannot be read.")
    q.add_argument("file", metavar="FILE")
    common(q)
    q.set_defaults(run=_coded(run_inspect))

    q = sub.add_parser("merge", help="merge LoRAs into one (exact, or reduced to --rank by SVD)",
                       description="Merge LoRA files with weights. Without --rank the result is exact (ranks add up); "
                       "with --rank each module's weighted sum is reduced to that rank by SVD.")
    q.add_argument("inputs", nargs="+", metavar="FILE[:WEIGHT]", help="LoRA files, each with an optional weight (default 1)")
    q.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")
    q.add_argument("--rank", type=int, metavar="R", help="reduce every module to rank R (SVD)")
    q.add_argument("--conv-rank", type=int, metavar="R", help="rank of the 3x3 convolution (LoCon) modules (default: --rank)")
    q.add_argument("--precision", choices=("auto", "float", "fp16", "bf16"), default="auto",
                   help="save precision (auto: the first input's)")
    common(q)
    q.set_defaults(run=_coded(run_merge))

    q = sub.add_parser("merge-into", help="bake LoRAs into a checkpoint (single file, or --diffusers folder)",
                       description="Write a model with the LoRAs added to its weights: a single-file checkpoint in the "
                       "model's own layout (A1111/ComfyUI), or with --diffusers a diffusers folder.")
    q.add_argument("model", metavar="MODEL", help="SD1.5 checkpoint (.safetensors/.ckpt) or, with --diffusers, also a diffusers folder")
    q.add_argument("loras", nargs="+", metavar="LORA[:WEIGHT]")
    out = q.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", metavar="OUT.safetensors")
    out.add_argument("--diffusers", metavar="DIR", help="write a diffusers folder instead of a single file")
    q.add_argument("--model-config", metavar="DIR", help=argparse.SUPPRESS)  # a diffusers-layout config folder (tests)
    common(q)
    q.set_defaults(run=_coded(run_merge_into))

    q = sub.add_parser("resize", help="reduce a LoRA's rank (fixed, or Kohya's dynamic sv_ratio/sv_fro/sv_cumulative)",
                       description="Resize a LoRA by SVD per module, as Kohya's resize_lora.py. Prints the Frobenius "
                       "share of each module's delta that is kept, and overall.")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--rank", type=int, metavar="R", help="new rank (with --dynamic: the most any module gets)")
    q.add_argument("--conv-rank", type=int, metavar="R", help="new rank of 3x3 convolution modules (default: --rank)")
    q.add_argument("--dynamic", choices=("sv_ratio", "sv_fro", "sv_cumulative"), help="choose each module's rank by this rule")
    q.add_argument("--param", type=float, metavar="X", help="the rule's parameter: sv_ratio e.g. 8, sv_fro/sv_cumulative e.g. 0.9")
    q.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")
    q.add_argument("--precision", choices=("auto", "float", "fp16", "bf16"), default="auto")
    common(q)
    q.set_defaults(run=_coded(run_resize))

    q = sub.add_parser("extract", help="extract a LoRA from a fine-tuned model (TUNED - BASE, SVD per module)",
                       description="The LoRA that best approximates TUNED - BASE per module. A text encoder that "
                       "differs by no more than --min-diff anywhere is left out (UNet only), as Kohya's script does.")
    q.add_argument("base", metavar="BASE", help="the original model (single file or diffusers folder)")
    q.add_argument("tuned", metavar="TUNED", help="the fine-tuned model")
    q.add_argument("--rank", type=int, required=True, metavar="R")
    q.add_argument("--conv-rank", type=int, metavar="R", help="also extract the 3x3 convolutions (LoCon) at this rank")
    q.add_argument("--min-diff", type=float, default=0.01, metavar="X", help="the text encoder counts as changed when some weight differs by more than X; otherwise the UNet alone is extracted (Kohya's rule and default, 0.01)")
    q.add_argument("--clamp-quantile", type=float, default=1.0, metavar="Q", help="clamp factor values to this quantile (Kohya uses 0.99; 1 = off)")
    q.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")
    q.add_argument("--precision", choices=("float", "fp16", "bf16"), default="float")
    q.add_argument("--model-config", metavar="DIR", help=argparse.SUPPRESS)
    common(q)
    q.set_defaults(run=_coded(run_extract))


def _coded(run):
    """`run` with errors as coded messages: an OSError (a full disk, a folder without write permission) becomes
    one sentence instead of a traceback; with --progress-json the message's code and parameters go to stderr as
    JSON for the GUI."""

    def coded(args) -> int:
        try:
            try:
                return run(args)
            except BrokenPipeError:  # `... --json | head`: the reader left; cli.main treats it as no error
                raise
            except OSError as exc:
                raise UserError(tool_error("file_system", detail=f"{exc.strerror or exc}"
                                           + (f" ({exc.filename})" if exc.filename else ""))) from exc
        except UserError as exc:
            if args.progress_json and exc.msg is not None:
                print(json.dumps({"error": message_json(exc.msg)}, ensure_ascii=False), file=sys.stderr, flush=True)
            raise

    return coded


def _progress(args):
    """Progress to stderr (JSON lines for the GUI, a counter for people) and SIGTERM/SIGINT as a cancel request."""
    from loratrainer.tools.callbacks import Progress

    state = {"cancel": False}

    def cancel(signum, frame):
        state["cancel"] = True

    signal.signal(signal.SIGTERM, cancel)
    if args.progress_json:
        signal.signal(signal.SIGINT, cancel)

    def report(done, total, what):
        if args.progress_json:
            print(json.dumps({"done": done, "total": total, "what": what}), file=sys.stderr, flush=True)
        elif sys.stderr.isatty():
            print(f"\r{done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    return Progress(report=report, cancelled=lambda: state["cancel"])


def _emit(args, report, text: str) -> None:
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(text)


def run_inspect(args) -> int:
    from loratrainer.tools.inspection import inspect_lora

    report = inspect_lora(args.file, _progress(args))
    _emit(args, report, report.format_text())
    return 0 if report.ok else EXIT_PROBLEMS


def _weighted(specs: list[str]):
    from loratrainer.tools.weighted import parse_weighted

    return [parse_weighted(s) for s in specs]


def run_merge(args) -> int:
    from loratrainer.tools.merge import merge_loras

    _positive(args.rank, "--rank")
    _positive(args.conv_rank, "--conv-rank")
    report = merge_loras(_weighted(args.inputs), args.output, rank=args.rank, conv_rank=args.conv_rank,
                         precision=args.precision, progress=_progress(args))
    text = f"merged {report.modules} modules -> {report.output}"
    if args.rank:
        text += f" (rank {args.rank}; Frobenius share kept overall: {report.overall_fro_retained:.2%})"
    _emit(args, report, text)
    return 0


def run_merge_into(args) -> int:
    from pathlib import Path

    from loratrainer.tools.bake import bake_into_checkpoint, bake_into_diffusers

    config = Path(args.model_config) if args.model_config else None
    if args.diffusers:
        report = bake_into_diffusers(args.model, _weighted(args.loras), args.diffusers, config_dir=config, progress=_progress(args))
    else:
        report = bake_into_checkpoint(args.model, _weighted(args.loras), args.output, config_dir=config, progress=_progress(args))
    _emit(args, report, f"{report.modules_changed} weights changed -> {report.output}")
    return 0


def run_resize(args) -> int:
    from loratrainer.tools.resize import resize_lora

    if args.rank is None and args.dynamic is None:
        raise UserError(tool_error("rank_or_dynamic"))
    if args.param is not None and args.dynamic is None:
        raise UserError(tool_error("param_without_dynamic"))
    _positive(args.rank, "--rank")
    _positive(args.conv_rank, "--conv-rank")
    report = resize_lora(args.file, args.output, rank=args.rank or 1_000_000, conv_rank=args.conv_rank,
                         dynamic=args.dynamic, param=args.param, precision=args.precision, progress=_progress(args))
    _emit(args, report, report.format_text())
    return 0


def run_extract(args) -> int:
    from pathlib import Path

    from loratrainer.tools.extract import extract_lora

    _positive(args.rank, "--rank")
    _positive(args.conv_rank, "--conv-rank")
    if not 0 < args.clamp_quantile <= 1:
        raise UserError(tool_error("bad_clamp"))
    report = extract_lora(args.base, args.tuned, args.output, rank=args.rank, conv_rank=args.conv_rank,
                          min_diff=args.min_diff, clamp_quantile=args.clamp_quantile, precision=args.precision,
                          config_dir=Path(args.model_config) if args.model_config else None, progress=_progress(args))
    text = (f"extracted {len(report.extracted)} modules; Frobenius share kept overall: {report.overall_fro_retained:.2%}"
            f" -> {report.output}")
    if not report.text_encoder_changed:
        text += (f"\nthe text encoder differs by no more than {args.min_diff:g} (--min-diff): UNet only, "
                 f"its {len(report.skipped)} modules left out")
    _emit(args, report, text)
    return 0


def _positive(value, name: str) -> None:
    if value is not None and value < 1:
        raise UserError(tool_error("rank_below_one", option=name))
