"""Results tab: a run's LoRA files per epoch (size and a metadata summary), its sample images by epoch, and
the paths to copy into AUTOMATIC1111 / ComfyUI. Everything is read from the run folder and the output folder;
the metadata comes from the safetensors header (no torch needed)."""

from __future__ import annotations

import json
import re
import struct
from datetime import datetime
from pathlib import Path

from loratrainer import events
from loratrainer.config import ConfigError, load_config
from loratrainer.gui.context import UiContext

SUMMARY_KEYS = ("ss_epoch", "ss_steps", "ss_network_dim", "ss_network_alpha", "ss_learning_rate", "ss_resolution", "ss_num_train_images")
_EPOCH = re.compile(r"-(\d{6})$")
_STEP = re.compile(r"-step(\d+)$")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` of a .safetensors file: an 8-byte header length, then a JSON header."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 * 1024 * 1024:
                return {}
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        return {}
    meta = header.get("__metadata__", {})
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def lora_files(output_dir: Path, name: str) -> list[Path]:
    """`<name>.safetensors`, `<name>-000001.safetensors`, `<name>-interrupted.safetensors`, ... oldest epoch first."""
    found = [p for p in output_dir.glob("*.safetensors") if p.stem == name or p.stem.startswith(name + "-")]

    def order(p: Path):
        rest = p.stem[len(name):]
        m = _EPOCH.search(rest) or _STEP.search(rest)
        if m:
            return (0, int(m.group(1)), p.name)
        return (1 if rest == "-interrupted" else 2, 0, p.name)

    return sorted(found, key=order)


class ResultsHandlers:
    def __init__(self, ui: UiContext):
        self.ui = ui
        self.t = ui.t

    def outcome(self, view) -> str:
        return self.t("results.outcome." + ("running" if view.alive else view.outcome.split(" ")[0]))

    def run_choices(self) -> list[tuple[str, str]]:
        return [(f"{run_dir.name} ({self.outcome(self.ui.jobs.view(run_dir))})", str(run_dir)) for run_dir in self.ui.jobs.runs()]

    def refresh_runs(self, chosen: str | None) -> dict:
        import gradio as gr

        choices = self.run_choices()
        values = [v for _, v in choices]
        value = chosen if chosen in values else (values[0] if values else None)
        return {self.ui.named["results_run"]: gr.update(choices=choices, value=value), **self.show_run(value)}

    def show_run(self, run_dir: str | None) -> dict:
        n = self.ui.named
        empty = {n["results_files"]: [], n["results_samples"]: [], n["results_paths"]: "", n["results_summary"]: self.t("results.none")}
        if not run_dir:
            return empty
        run = Path(run_dir)
        try:
            config = load_config(run / events.CONFIG_FILE)
        except ConfigError as exc:
            return {**empty, n["results_summary"]: self.t.error(exc)}
        out_dir, name = Path(config.folders.output_dir), config.folders.output_name
        files = lora_files(out_dir, name)
        rows = [self.file_row(p) for p in files]
        view = self.ui.jobs.view(run)
        samples = [(path, self.t("results.sample_caption", epoch=e.get("epoch", "?"), step=e.get("step", "?")))
                   for e in view.samples if (path := self.ui.display.copy(e.get("path", "")))]
        paths = "\n".join(str(p) for p in files) or str(out_dir)
        summary = self.t("results.summary", name=name, folder=str(out_dir), count=len(files), outcome=self.outcome(view), run=str(run))
        return {n["results_files"]: rows, n["results_samples"]: samples, n["results_paths"]: paths, n["results_summary"]: summary}

    def file_row(self, path: Path) -> list:
        meta = read_metadata(path)
        stat = path.stat()
        summary = ", ".join(f"{k.removeprefix('ss_')}={meta[k]}" for k in SUMMARY_KEYS if k in meta)
        when = datetime.fromtimestamp(stat.st_mtime).strftime("%Y-%m-%d %H:%M")
        return [path.name, meta.get("ss_epoch", ""), f"{stat.st_size / 1024 / 1024:.2f}", when, summary]


def build(ui: UiContext) -> ResultsHandlers:
    import gradio as gr

    t, n, h = ui.t, ui.named, ResultsHandlers(ui)
    with gr.Row():
        n["results_run"] = gr.Dropdown(label=t("results.run"), choices=[], scale=4, elem_id="results-run")
        refresh = gr.Button(t("results.refresh"), scale=1, elem_id="results-refresh")
    n["results_summary"] = gr.Markdown(t("results.none"), elem_id="results-summary")
    n["results_files"] = gr.Dataframe(
        headers=[t("results.col_file"), t("results.col_epoch"), t("results.col_size"), t("results.col_time"), t("results.col_metadata")],
        datatype=["str", "str", "str", "str", "str"], interactive=False, wrap=True, label=t("results.files"), elem_id="results-files",
    )
    n["results_samples"] = gr.Gallery(label=t("results.samples"), columns=6, height=300, object_fit="contain", elem_id="results-samples")
    n["results_paths"] = gr.Textbox(label=t("results.paths"), info=t("results.paths_help"), lines=3, interactive=False, buttons=["copy"], elem_id="results-paths")
    outputs = [n[k] for k in ("results_run", "results_files", "results_samples", "results_paths", "results_summary")]
    refresh.click(h.refresh_runs, inputs=[n["results_run"]], outputs=outputs, api_name="results")
    n["results_run"].input(h.show_run, inputs=[n["results_run"]], outputs=outputs[1:], api_visibility="private")
    ui.on_load(h.refresh_runs, inputs=[n["results_run"]], outputs=outputs)
    ui.after_build(lambda: n["tab_results"].select(h.refresh_runs, inputs=[n["results_run"]], outputs=outputs, api_visibility="private"))
    return h
