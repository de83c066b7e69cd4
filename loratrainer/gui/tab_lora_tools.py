"""Utilities > LoRA tools: inspect, merge, merge into a model, resize, extract (loratrainer/tools, docs/lora-tools.md).

The tools import torch, which the GUI process never does: each run is `python -m loratrainer lora <tool> ...
--json --progress-json` in its own process group (an argument list, never a shell line). Its stderr carries one
JSON line per step (the progress bar) and, when it fails, its error as a coded message (tools/messages.py, said here
in the page's language), its stdout the JSON report shown at the end; Cancel sends SIGTERM, on
which the tool stops at the next module and leaves no file. Outputs go beside the inputs under a free name
(`<name>-merged.safetensors`, `-2`, `-3`, ...): nothing is ever overwritten.
"""

# No `from __future__ import annotations`: Gradio reads gr.Request annotations (as in tab_utilities).
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from loratrainer.errors import UserError
from loratrainer.gui import filebrowser
from loratrainer.gui.context import UiContext
from loratrainer.gui.i18n import md
from loratrainer.machine import child_processes
from loratrainer.messages import Msg
from loratrainer.tools.messages import message_from_json
from loratrainer.tools.outputs import free_name

TOOLS = ("inspect", "merge", "merge-into", "resize", "extract")
DYNAMIC = ("none", "sv_ratio", "sv_fro", "sv_cumulative")
KEYS = ("lt_tool", "lt_file", "lt_files", "lt_model", "lt_base", "lt_tuned", "lt_rank", "lt_conv_rank", "lt_dynamic",
        "lt_param", "lt_min_diff", "lt_precision", "lt_diffusers")


class ToolProcess:
    """One running `loratrainer lora ...`: its progress, its report, cancel (SIGTERM to its process group)."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = child_processes.start([sys.executable, "-m", "loratrainer", "lora", *args, "--json", "--progress-json"],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                          encoding="utf-8", errors="replace", env=env)
        self.done, self.total, self.stdout = 0, 0, ""
        self.errors: list[str] = []
        self.message: Msg | None = None  # the tool's coded error, when it sent one
        self._threads = [threading.Thread(target=self._read_progress, daemon=True),
                         threading.Thread(target=self._read_report, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_progress(self) -> None:
        assert self.proc.stderr is not None and self.proc.stdout is not None  # both started as PIPE
        for line in self.proc.stderr:
            if line.startswith("{"):
                try:
                    step = json.loads(line)
                    if "error" in step:
                        self.message = message_from_json(step["error"])
                    else:
                        self.done, self.total = int(step["done"]), int(step["total"])
                    continue
                except (ValueError, KeyError, TypeError):
                    pass
            self.errors.append(line.rstrip("\n"))

    def _read_report(self) -> None:
        assert self.proc.stdout is not None  # started as PIPE
        self.stdout = self.proc.stdout.read()

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._threads:
            t.join(5)
        return code

    def cancel(self) -> None:
        # SIGTERM to its group: the tool stops at the next module and leaves no file (Windows: the tree ends)
        child_processes.terminate([self.proc.pid], [self.proc.pid])

    def error_line(self) -> str:
        """The tool's own one-sentence error (`error: ...`), else the last line it wrote."""
        for line in reversed(self.errors):
            if line.startswith("error: "):
                return line[len("error: "):]
        lines = [e for e in self.errors if e.strip()]
        return lines[-1] if lines else ""


# which boxes each tool shows; TOGGLED are the boxes that come and go
SHOWN = {
    "inspect": {"lt_file"}, "resize": {"lt_file", "lt_rank", "lt_conv_rank", "lt_dynamic", "lt_param", "lt_precision"},
    "merge": {"lt_files", "lt_rank", "lt_conv_rank", "lt_precision"}, "merge-into": {"lt_model", "lt_files", "lt_diffusers"},
    "extract": {"lt_base", "lt_tuned", "lt_rank", "lt_conv_rank", "lt_min_diff"},
}
TOGGLED = ["lt_file", "lt_files", "lt_model", "lt_base", "lt_tuned", "lt_rank", "lt_conv_rank", "lt_dynamic", "lt_param",
           "lt_min_diff", "lt_precision", "lt_diffusers"]


def _keys(t) -> set:
    from loratrainer.gui.i18n import table

    return set(table(t.lang))


class LoraToolsHandlers:
    def __init__(self, ui: UiContext):
        self.ui = ui
        self.t = ui.t
        self._running: dict[str, ToolProcess] = {}  # session -> its tool process

    def values(self, data: dict) -> dict:
        by_id = {id(c): k for k, c in self.ui.named.items()}
        return {by_id[id(c)]: v for c, v in data.items() if id(c) in by_id}

    def switch(self, tool: str) -> list:
        """The chosen tool's help and boxes (the Rank box's help for this tool alone); the previous tool's
        answer is cleared, so it is never read as this tool's (issue 22)."""
        import gradio as gr

        rank_help = self.t(f"lora.rank_help.{tool}") if f"lora.rank_help.{tool}" in _keys(self.t) else ""
        updates = []
        for k in TOGGLED:
            update = gr.update(visible=k in SHOWN[tool])
            if k == "lt_rank" and rank_help:
                update = gr.update(visible=True, info=rank_help)
            updates.append(update)
        # the file box's row holds its Browse… button: both come and go together
        return [gr.update(value=self.t(f"lora.help.{tool}"))] + updates + [gr.update(visible="lt_file" in SHOWN[tool]), ""]

    # -- from the form to an argument list ------------------------------------------------------------------

    def arguments(self, v: dict) -> tuple[list[str], Path | None]:
        """(argv after `lora`, the output path) for the chosen tool, or UserError in the page's language."""
        tool = v.get("lt_tool") or "inspect"
        if tool == "inspect":
            return ["inspect", str(self._existing(v.get("lt_file"), "lora.file"))], None
        if tool == "resize":
            source = self._existing(v.get("lt_file"), "lora.file")
            rank, dynamic = self._rank(v.get("lt_rank"), "lora.rank", optional=True), v.get("lt_dynamic") or "none"
            args = ["resize", str(source)]
            if dynamic != "none":
                param = self._number(v.get("lt_param"), "lora.param")
                args += ["--dynamic", dynamic, "--param", repr(param)]
                stem = f"{source.stem}-{dynamic}-{param:g}"
            elif rank is None:
                raise UserError(self.t("lora.rank_needed"))
            else:
                stem = f"{source.stem}-rank{rank}"
            if rank is not None:
                args += ["--rank", str(rank)]
            output = free_name(source.parent, stem)
            return args + self._conv(v) + ["--precision", v.get("lt_precision") or "auto", "-o", str(output)], output
        if tool == "merge":
            specs = self._weighted_files(v.get("lt_files"))
            first = Path(specs[0][0])
            output = free_name(first.parent, f"{first.stem}-merged")
            rank = self._rank(v.get("lt_rank"), "lora.rank", optional=True)
            args = ["merge", *[f"{p}:{w}" for p, w in specs]] + (["--rank", str(rank)] if rank else [])
            return args + self._conv(v) + ["--precision", v.get("lt_precision") or "auto", "-o", str(output)], output
        if tool == "merge-into":
            model = self._existing(v.get("lt_model"), "lora.model", folder_ok=True)
            specs = self._weighted_files(v.get("lt_files"))
            stem = f"{model.stem}-{Path(specs[0][0]).stem}"
            if v.get("lt_diffusers") or model.is_dir():
                output = free_name(model.parent, stem, "")
                out_args = ["--diffusers", str(output)]
            else:
                output = free_name(model.parent, stem)
                out_args = ["-o", str(output)]
            return ["merge-into", str(model), *[f"{p}:{w}" for p, w in specs], *out_args], output
        if tool == "extract":
            base = self._existing(v.get("lt_base"), "lora.base", folder_ok=True)
            tuned = self._existing(v.get("lt_tuned"), "lora.tuned", folder_ok=True)
            rank = self._rank(v.get("lt_rank"), "lora.rank")
            output = free_name(tuned.parent, f"{tuned.stem}-extracted-rank{rank}")
            min_diff = self._number(v.get("lt_min_diff"), "lora.min_diff", zero_ok=True)
            return (["extract", str(base), str(tuned), "--rank", str(rank), "--min-diff", repr(min_diff)] + self._conv(v)
                    + ["-o", str(output)]), output
        raise UserError(self.t("lora.choose_tool"))

    def _existing(self, value, label_key: str, *, folder_ok: bool = False) -> Path:
        text = (value or "").strip()
        if not text:
            raise UserError(self.t("lora.missing", setting=self.t(label_key)))
        path = Path(os.path.expanduser(text))
        if not path.exists() or (path.is_dir() and not folder_ok and not any(path.glob("*.safetensors"))):
            raise UserError(self.t("lora.not_found", setting=self.t(label_key), path=text))
        return path

    def _weighted_files(self, text) -> list[tuple[str, float]]:
        from loratrainer.tools.weighted import parse_weighted

        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if not lines:
            raise UserError(self.t("lora.missing", setting=self.t("lora.files")))
        out = []
        for line in lines:
            path, weight = parse_weighted(line)
            if not path.exists():
                raise UserError(self.t("lora.not_found", setting=self.t("lora.files"), path=str(path)))
            out.append((str(path), weight))
        return out

    def _rank(self, value, label_key: str, *, optional: bool = False) -> int | None:
        if value in (None, "", 0) and optional:
            return None
        try:
            rank = int(value)
        except (TypeError, ValueError):
            rank = 0
        if rank < 1 or rank != float(value or 0):
            raise UserError(self.t("lora.bad_rank", setting=self.t(label_key)))
        return rank

    def _conv(self, v: dict) -> list[str]:
        rank = self._rank(v.get("lt_conv_rank"), "lora.conv_rank", optional=True)
        return ["--conv-rank", str(rank)] if rank else []

    def _number(self, value, label_key: str, *, zero_ok: bool = False) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            x = float("nan")
        if not (x >= 0 if zero_ok else x > 0):  # NaN fails both
            raise UserError(self.t("lora.bad_number_zero" if zero_ok else "lora.bad_number", setting=self.t(label_key)))
        return x

    # -- running ------------------------------------------------------------------------------------------------

    def run(self, data: dict, request=None):
        """A generator: progress lines while the tool runs in its own process, then its report."""
        v = self.values(data)
        try:
            args, output = self.arguments(v)
        except (UserError, OSError, ValueError) as exc:  # OSError: a path the file system refuses (name too long)
            yield self.t.error(exc)
            return
        session = getattr(request, "session_hash", None) or "direct"
        if session in self._running and self._running[session].proc.poll() is None:
            yield self.t("lora.busy")
            return
        process = self._running[session] = ToolProcess(args)
        try:
            yield self.t("lora.starting")
            while (code := process.wait(0.5)) is None:
                if process.total:
                    yield self.t("lora.progress", done=process.done, total=process.total)
        finally:
            if process.proc.poll() is None:  # the page went away: stop the tool, which leaves no file
                process.cancel()
            self._running.pop(session, None)
        yield self.result(args[0], code, process, output)

    def cancel(self, request=None) -> str:
        process = self._running.get(getattr(request, "session_hash", None) or "direct")
        if process is None or process.proc.poll() is not None:
            return self.t("lora.nothing_running")
        process.cancel()
        return self.t("lora.cancelling")

    def result(self, tool: str, code: int, process: ToolProcess, output: Path | None) -> str:
        if code == 10:
            return self.t("lora.cancelled")
        try:
            report = json.loads(process.stdout) if process.stdout.strip() else None
        except ValueError:
            report = None
        if report is None:
            said = self.t.message(process.message) if process.message is not None else process.error_line()
            return self.t("lora.failed", error=md(said or f"exit code {code}"))
        if tool == "inspect":
            return self.inspect_text(report)
        lines = [self.t("lora.written", path=str(report.get("output", output)))]
        if tool in ("resize", "extract") or (tool == "merge" and report.get("fro_retained")):
            lines.append(self.t("lora.fro_overall", percent=f"{100 * report['overall_fro_retained']:.2f}"))
        if tool == "extract":
            lines.append(self.t("lora.extracted", extracted=report["extracted"], skipped=len(report["skipped"])))
        if tool == "merge-into":
            lines.append(self.t("lora.baked", changed=report["modules_changed"]))
        if tool == "resize":
            ranks = sorted({m["new_rank"] for m in report["modules"].values()})
            lines.append(self.t("lora.new_ranks", ranks=", ".join(map(str, ranks))))
        return "\n\n".join(lines)

    def inspect_text(self, r: dict) -> str:
        t = self.t
        spread = lambda values: ", ".join(f"{v:g} ×{n}" for v, n in sorted(_count(values).items())) or "-"
        rows = [
            (t("lora.col_format"), t(f"lora.format.{r['format']}")),
            (t("lora.col_family"), r["family"]),
            (t("lora.col_modules"), t("lora.modules_value", unet=r["modules"].get("unet", 0), te=r["modules"].get("text_encoder", 0))),
            (t("lora.col_rank"), str(r["rank"]) if r["rank"] is not None else spread(r["ranks"].values())),
            (t("lora.col_alpha"), f"{r['alpha']:g}" if r["alpha"] is not None else spread(r["alphas"].values())),
            (t("lora.col_dtype"), ", ".join(f"{d} ({n})" for d, n in sorted(r["dtypes"].items()))),
            (t("lora.col_size"), f"{r['size_bytes'] / 1e6:.1f} MB"),
        ]
        if r["tags"].get("top"):
            rows.append((t("lora.col_tags"), ", ".join(f"{md(str(tag))} ({n})" for tag, n in r["tags"]["top"][:15])))
        lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        if r["problems"]:
            lines += ["", t("lora.problems")] + [f"- {t('lora.problem.' + p['code'], count=p['count'], example=md(p['example']))}"
                                               for p in r["problems"]]
        else:
            lines += ["", t("lora.no_problems")]
        meta = {k: (v if len(v) <= 160 else v[:160] + "…") for k, v in r["metadata"].items() if k != "ss_tag_frequency"}
        if meta:
            lines += ["", t("lora.metadata"), "```", *[f"{k} = {v}" for k, v in sorted(meta.items())], "```"]
        return "\n".join(lines)


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def build(ui: UiContext) -> LoraToolsHandlers:
    import gradio as gr

    from loratrainer.gui.form import number_box

    t, n, h = ui.t, ui.named, LoraToolsHandlers(ui)
    gr.Markdown(t("lora.intro"))
    n["lt_tool"] = gr.Radio([(t(f"lora.tool.{x}"), x) for x in TOOLS], value="inspect", label=t("lora.tool"), elem_id="lt-tool")
    n["lt_help"] = gr.Markdown(t("lora.help.inspect"))
    n["lt_file"], n["lt_file_row"] = filebrowser.path_box(ui, lambda: gr.Textbox(label=t("lora.file"), elem_id="lt-file"), files=True, key="lt-file")
    n["lt_files"] = gr.Textbox(label=t("lora.files"), info=t("lora.files_help"), lines=3, visible=False, elem_id="lt-files")
    n["lt_model"] = gr.Textbox(label=t("lora.model"), visible=False, elem_id="lt-model")
    with gr.Row():
        n["lt_base"] = gr.Textbox(label=t("lora.base"), visible=False, elem_id="lt-base")
        n["lt_tuned"] = gr.Textbox(label=t("lora.tuned"), visible=False, elem_id="lt-tuned")
    with gr.Row():
        n["lt_rank"] = number_box(None, label=t("lora.rank"), info=t("lora.rank_help.resize"), precision=0, minimum=0, visible=False, elem_id="lt-rank")
        n["lt_conv_rank"] = number_box(None, label=t("lora.conv_rank"), precision=0, minimum=0, visible=False, elem_id="lt-conv-rank")
        n["lt_dynamic"] = gr.Dropdown([(t(f"lora.dynamic.{d}"), d) for d in DYNAMIC], value="none", label=t("lora.dynamic"), visible=False)
        n["lt_param"] = gr.Number(0.9, label=t("lora.param"), info=t("lora.param_help"), visible=False, elem_id="lt-param")
        n["lt_min_diff"] = number_box(0.01, label=t("lora.min_diff"), minimum=0, visible=False, elem_id="lt-min-diff")
        n["lt_precision"] = gr.Dropdown(["auto", "float", "fp16", "bf16"], value="auto", label=t("lora.precision"), visible=False)
        n["lt_diffusers"] = gr.Checkbox(False, label=t("lora.diffusers"), visible=False)
    with gr.Row():
        run = gr.Button(t("lora.run"), variant="primary", elem_id="lt-run")
        cancel = gr.Button(t("lora.cancel"), variant="stop", interactive=False, elem_id="lt-cancel")  # pressable while a tool runs
    n["lt_message"] = gr.Markdown(elem_id="lt-message")

    def switch(tool):
        return h.switch(tool)

    n["lt_tool"].change(switch, inputs=[n["lt_tool"]], outputs=[n["lt_help"]] + [n[k] for k in TOGGLED] + [n["lt_file_row"], n["lt_message"]],
                        api_visibility="private")
    inputs = {n[k] for k in KEYS}

    def run_tool(data: dict, request: gr.Request):
        yield from h.run(data, request)

    def cancel_tool(request: gr.Request) -> str:
        return h.cancel(request)

    running, idle = (lambda: gr.update(interactive=True)), (lambda: gr.update(interactive=False))
    run.click(running, outputs=[cancel], api_visibility="private", show_progress="hidden").then(
        run_tool, inputs=inputs, outputs=[n["lt_message"]], api_name="lora_tool").then(
        idle, outputs=[cancel], api_visibility="private", show_progress="hidden")
    cancel.click(cancel_tool, inputs=None, outputs=[n["lt_message"]], api_visibility="private")
    return h
