"""Results tab: choosing the best epoch of a run.

A run lists exactly the LoRA files it wrote (its checkpoint events, loratrainer.compare.runs), one row each with
epoch, step, the average loss over that epoch, time and size; a click shows the file's full metadata and its
path to copy. Below: the sample images, the prompt x epoch grid made from them, and the epoch x LoRA-weight grid,
rendered on demand by `loratrainer compare` in a process of its own (progress, Cancel) on the run's base model.
Metadata comes from the safetensors header (no torch in the GUI)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from loratrainer.run import files as run_files
from loratrainer.compare.runs import SavedFile, read_run
from loratrainer.config import ConfigError, load_config
from loratrainer.gui.context import UiContext

DEFAULT_WEIGHTS = "0, 0.5, 0.75, 1"
FOLLOW_S = 3.0  # how often the Results tab looks for a newly started run (listing folders only)
RESULTS_OUTPUTS = ("results_files", "results_samples", "results_paths", "results_summary", "results_meta", "results_file_path",
                   "results_records", "grid_files", "grid_prompts", "sample_grid", "weight_grid", "grid_message", "sample_grid_message",
                   "results_download", "results_zip", "grid_width", "grid_height")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` of a .safetensors file ({} when there is none to read). Through the LoRA tools' bounded
    reader: a header that is a JSON list gave an AttributeError and a FIFO hung the page's handler."""
    from loratrainer.compare.runs import file_metadata

    return file_metadata(path)


def readable_metadata(meta: dict[str, str]) -> dict:
    """Kohya stores nested values (tag frequencies, buckets, datasets) as JSON strings: shown unpacked."""
    out = {}
    for key, value in sorted(meta.items()):
        if value[:1] in "{[":
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out


def first_prompt(config) -> list[str]:
    """The run's first sample prompt (its text only), for a run that rendered no samples."""
    from loratrainer.compare.inputs import first_sample_prompt

    return first_sample_prompt(config)


class ResultsHandlers:
    def __init__(self, ui: UiContext):
        from loratrainer.compare.process import Renders

        import atexit

        from loratrainer.gui.external_programs import TensorBoards

        self.ui = ui
        self.t = ui.t
        self.renders = Renders()
        self.tensorboards = TensorBoards()
        atexit.register(self.tensorboards.close)

    def outcome(self, view) -> str:
        return self.t("results.outcome." + ("running" if view.alive else view.outcome.split(" ")[0]))

    def run_choices(self) -> list[tuple[str, str]]:
        return [(f"{run_dir.name} ({self.outcome(self.ui.jobs.view(run_dir))})", str(run_dir)) for run_dir in self.ui.jobs.all_runs()]

    def refresh_runs(self, chosen: str | None = None) -> dict:
        """The run list, newest first, with the newest run selected (Refresh is how a new run is found)."""
        import gradio as gr

        choices = self.run_choices()
        value = choices[0][1] if choices else None
        return {self.ui.named["results_run"]: gr.update(choices=choices, value=value), **self.show_run(value)}

    def keep_run(self, chosen: str | None, newest_seen: str | None = None) -> dict:
        """Opening the tab: the chosen run stays chosen, unless a run started since the tab last listed them: then
        that new run is shown (it used to take Refresh to find it)."""
        import gradio as gr

        choices = self.run_choices()
        values = [v for _, v in choices]
        newest = values[0] if values else None
        value = chosen if chosen in values and newest == newest_seen else newest
        return {self.ui.named["results_run"]: gr.update(choices=choices, value=value), self.ui.named["results_newest"]: newest,
                **self.show_run(value)}

    def follow_newest(self, chosen: str | None, newest_seen: str | None) -> dict:
        """The Results tab's timer: a run started since the list was last shown (from Start, the queue or the CLI)
        is listed, and shown when the user was looking at the newest run (or none); a user who chose an older run
        keeps it. Nothing is sent while no new run appears (the run folders are listed, no run is read)."""
        import gradio as gr

        values = [str(p) for p in self.ui.jobs.all_runs()]
        newest = values[0] if values else None
        if newest is None or newest == newest_seen:
            return gr.skip()  # every output left as it is
        n = self.ui.named
        # "was the newest": the newest the tab knew, or one newer than it (Refresh moves to the newest too)
        was_newest = chosen in (None, "", newest_seen) or chosen not in values or (
            newest_seen in values and values.index(chosen) < values.index(newest_seen))
        choices = self.run_choices()
        if not was_newest:
            return {n["results_run"]: gr.update(choices=choices, value=chosen), n["results_newest"]: newest}
        return {n["results_run"]: gr.update(choices=choices, value=newest), n["results_newest"]: newest, **self.show_run(newest)}

    def show_run(self, run_dir: str | None) -> dict:
        import gradio as gr

        n, t = self.ui.named, self.t
        empty = {n["results_files"]: [], n["results_samples"]: [], n["results_paths"]: "", n["results_summary"]: t("results.none"),
                 n["results_meta"]: None, n["results_file_path"]: "", n["results_records"]: [],
                 n["grid_files"]: gr.update(choices=[], value=[]), n["grid_prompts"]: "", n["sample_grid"]: None, n["weight_grid"]: None,
                 n["grid_message"]: "", n["sample_grid_message"]: "",
                 n["results_download"]: gr.update(value=None, interactive=False), n["results_zip"]: None}
        if not run_dir:
            return empty
        run = Path(run_dir)
        try:
            config = load_config(run / run_files.CONFIG_FILE)
        except ConfigError as exc:
            return {**empty, n["results_summary"]: t.error(exc)}
        record = read_run(run)
        view = self.ui.jobs.view(run)
        kept = [f for f in record.files if f.exists]
        samples = [(path, t("results.sample_caption", epoch=s.epoch, step=s.step))
                   for s in record.samples if (path := self.ui.display.copy(s.path))]
        summary = t("results.summary", name=config.folders.output_name, folder=config.folders.output_dir, count=len(kept),
                    outcome=self.outcome(view), run=str(run))
        if len(kept) < len(record.files):
            summary += " " + t("results.removed", count=len(record.files) - len(kept))
        if view.state.resumed_from:  # the run it continued, so a resumed run is not an unrelated one
            before = self.ui.jobs.run_that_saved(view.state.resumed_from)
            summary += "\n\n" + (t("results.resumed_from_run", run=before.name, state=view.state.resumed_from) if before is not None
                                  else t("results.resumed_from", state=view.state.resumed_from))
        summary += "\n\n" + self.rates(config)
        choices = [(self.file_label(f), str(f.path)) for f in kept]
        sample_grid = record.run_dir / "sample-grid.png"
        return {**empty,
                n["results_files"]: [self.file_row(f) for f in record.files],
                n["results_samples"]: samples,
                n["results_paths"]: "\n".join(str(f.path) for f in kept),
                n["results_summary"]: summary,
                n["results_records"]: [str(f.path) for f in record.files],
                n["grid_files"]: gr.update(choices=choices, value=[v for _, v in choices]),
                n["grid_prompts"]: "\n".join(list(dict.fromkeys(s.prompt for s in record.samples))[:2] or first_prompt(config)),
                n["sample_grid"]: self.ui.display.copy(sample_grid) if sample_grid.is_file() else None,
                n["weight_grid"]: self.latest_weight_grid(run),
                # the weight grid at the run's resolution (an SDXL run's 1024, not SD1.5's 512); the user may change it
                n["grid_width"]: config.buckets.resolution[0], n["grid_height"]: config.buckets.resolution[1]}

    def rates(self, config) -> str:
        """The learning rates the run used (a typo such as 1.0 shows here, next to its result)."""
        o = config.optimizer
        return self.t("results.rates", optimizer=o.optimizer, lr=f"{o.learning_rate:g}", unet=f"{config.effective_unet_lr:g}",
                      te=f"{config.effective_text_encoder_lr:g}")

    def file_label(self, f: SavedFile) -> str:
        t = self.t
        if f.kind == "epoch":
            return t("results.kind.epoch", epoch=f.epoch)
        if f.kind == "step":
            return t("results.kind.step", step=f.step, epoch=f.epoch)
        return t(f"results.kind.{f.kind}", step=f.step, epoch=f.epoch)

    def file_row(self, f: SavedFile) -> list:
        size = f.size
        return [f.path.name, self.file_label(f), f.step, f"{f.epoch_loss:.4f}" if f.epoch_loss is not None else "", self.validation_cell(f),
                f.local_time, f"{size / 1024 / 1024:.2f}" if size is not None else self.t("results.deleted")]

    def validation_cell(self, f: SavedFile) -> str:
        """The file's validation loss (train/validation.py), the run's lowest marked: the number to choose an epoch by."""
        if f.validation_loss is None:
            return ""
        return f"{f.validation_loss:.4f}" + (f" ★ {self.t('results.lowest_validation')}" if f.lowest_validation else "")

    def select_file(self, records: list[str], evt) -> dict:
        """A click on a row: that file's full metadata and its path."""
        n = self.ui.named
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not records or row is None or row >= len(records):
            return {n["results_meta"]: None, n["results_file_path"]: ""}
        path = records[row]
        meta = read_metadata(path)
        offered = self.ui.display.download(path)  # for a browser on another machine (docs/remote.md)
        return {n["results_meta"]: readable_metadata(meta) if meta else {"": self.t("results.no_metadata")}, n["results_file_path"]: path,
                n["results_download"]: _download_update(offered)}

    def zip_run(self, run_dir: str | None) -> dict:
        """Every LoRA file, sample image and grid the run made, in one zip to download. Only the files the run's
        events name (and its grids), never anything else of the disk."""
        n = self.ui.named
        if not run_dir:
            return {n["results_zip"]: None, n["results_tools_message"]: self.t("results.none")}
        run = Path(run_dir)
        if run not in self.ui.jobs.runs():
            return {n["results_zip"]: None, n["results_tools_message"]: self.t("results.none")}
        record = read_run(run)
        files = [f.path for f in record.files if f.exists] + [Path(s.path) for s in record.samples]
        files += [run / "sample-grid.png", *sorted((run / "grids").glob("weights-*.png"))]
        try:
            made = self.ui.display.zip_download(run.name, files)
        except OSError as exc:
            return {n["results_zip"]: None, n["results_tools_message"]: self.t("results.zip_failed", error=str(exc))}
        if made is None:
            return {n["results_zip"]: None, n["results_tools_message"]: self.t("results.zip_empty")}
        return {n["results_zip"]: made, n["results_tools_message"]: ""}

    # -- doors out ----------------------------------------------------------------------------------------

    def open_output(self, run_dir: str | None) -> str:
        from loratrainer.gui.i18n import md
        from loratrainer.gui.external_programs import open_folder

        if not run_dir:
            return self.t("results.choose_run")
        try:
            folder = Path(load_config(Path(run_dir) / run_files.CONFIG_FILE).folders.output_dir)
        except ConfigError as exc:
            return self.t.error(exc)
        if open_folder(folder):
            return self.t("results.folder_opened", folder=md(str(folder)))
        return self.t("results.folder_no_desktop", folder=md(str(folder)))

    def tensorboard(self, run_dir: str | None) -> str:
        from loratrainer.gui.i18n import md

        if not run_dir:
            return self.t("results.choose_run")
        logdir = Path(run_dir) / run_files.TENSORBOARD_DIR
        command = f"tensorboard --logdir \"{logdir}\" --host 127.0.0.1"
        if not logdir.is_dir():
            return self.t("results.tensorboard_no_logs", folder=md(str(logdir)))
        if not self.tensorboards.available():
            return self.t("results.tensorboard_missing", command=md(command))
        try:
            url = self.tensorboards.url_for(logdir)
        except RuntimeError as exc:
            from loratrainer.gui.external_programs import TensorBoardFailed

            said = self.t.message(exc.msg) if isinstance(exc, TensorBoardFailed) else str(exc)
            return self.t("results.tensorboard_failed", detail=md(said), command=md(command))
        return self.t("results.tensorboard_running", url=url)

    # -- the grids ---------------------------------------------------------------------------------------------

    def make_sample_grid(self, run_dir: str | None) -> dict:
        from loratrainer.compare.sample_grid import sample_grid

        n = self.ui.named
        if not run_dir:
            return {n["sample_grid_message"]: self.t("results.choose_run"), n["sample_grid"]: None}
        try:
            path = sample_grid(read_run(run_dir))
        except OSError as exc:
            return {n["sample_grid_message"]: self.t("results.grid_write_failed", detail=exc.strerror or str(exc)), n["sample_grid"]: None}
        if path is None:
            return {n["sample_grid_message"]: self.t("results.no_samples"), n["sample_grid"]: None}
        return {n["sample_grid_message"]: self.t("results.grid_saved", path=str(path)), n["sample_grid"]: self.ui.display.copy(path)}

    def latest_weight_grid(self, run: Path) -> str | None:
        grids = sorted((run / "grids").glob("weights-*.png"))
        return self.ui.display.copy(grids[-1]) if grids else None

    def start_weight_grid(self, run_dir, files, weights, prompts, seed, steps, width, height) -> dict:
        import gradio as gr

        n, t = self.ui.named, self.t
        timer_off = {n["grid_timer"]: gr.Timer(active=False)}
        if not run_dir:
            return {n["grid_message"]: t("results.choose_run"), **timer_off}
        if not files:
            return {n["grid_message"]: t("results.grid_no_files"), **timer_off}
        lines = [p.strip() for p in (prompts or "").splitlines() if p.strip()]
        if not lines:
            return {n["grid_message"]: t("results.grid_no_prompt", label=t("results.grid_prompts")), **timer_off}
        from loratrainer.compare.inputs import check_numbers, parse_weights
        from loratrainer.errors import UserError

        try:
            parse_weights(weights or "")
        except UserError:
            return {n["grid_message"]: t("results.grid_bad_weights", label=t("results.grid_weights")), **timer_off}
        numbers = {}
        for key, value in (("grid_seed", seed), ("grid_steps", steps), ("grid_width", width), ("grid_height", height)):
            if value is None or value < (0 if key == "grid_seed" else 1) or (key in ("grid_width", "grid_height") and int(value) % 8):
                return {n["grid_message"]: t("results.grid_bad_number", label=t(f"results.{key}")), **timer_off}
            numbers[key] = str(int(value))
        try:  # the bounds `loratrainer compare` holds to (a sample image's): said here before a process starts
            check_numbers(steps=int(numbers["grid_steps"]), width=int(numbers["grid_width"]), height=int(numbers["grid_height"]))
        except UserError as exc:
            return {n["grid_message"]: t.message(exc.msg), **timer_off}
        target = Path(run_dir) / "grids" / f"weights-{datetime.now():%Y%m%d-%H%M%S}.png"
        # the run's base model, VAE, clip skip and sampler: `--run`
        args = [*files, "--weights", weights, "--seed", numbers["grid_seed"], "--steps", numbers["grid_steps"], "--width", numbers["grid_width"],
                "--height", numbers["grid_height"], "--run", str(run_dir)]
        for line in lines:
            args += ["--prompt", line]
        try:
            self.renders.start(args, target)
        except RuntimeError:
            return {n["grid_message"]: t("results.grid_busy"), **timer_off}
        except OSError as exc:
            return {n["grid_message"]: t("results.grid_write_failed", detail=exc.strerror or str(exc)), **timer_off}
        return {n["grid_message"]: t("results.grid_loading"), n["grid_timer"]: gr.Timer(active=True), n["grid_cancel"]: gr.update(interactive=True)}

    def poll_weight_grid(self) -> dict:
        import gradio as gr

        n, t = self.ui.named, self.t
        r = self.renders.current
        if r is None:
            return {n["grid_timer"]: gr.Timer(active=False), n["grid_cancel"]: gr.update(interactive=False)}
        last = r.last()
        if r.running:
            if last.get("phase") == "rendering":
                percent = 100 * last["done"] / max(1, last["total"])
                text = t("results.grid_progress", done=last["done"], total=last["total"], what=last.get("what", ""))
                bar = f'<div class="lt-progress"><div style="width:{percent:.1f}%"></div></div>'
                return {n["grid_message"]: text + "\n\n" + bar}
            return {n["grid_message"]: t("results.grid_loading")}
        off = {n["grid_timer"]: gr.Timer(active=False), n["grid_cancel"]: gr.update(interactive=False)}
        if r.cancelled:
            return {n["grid_message"]: t("results.grid_cancelled"), **off}
        if r.popen.returncode == 0 and r.target.is_file():
            return {n["grid_message"]: t("results.grid_saved", path=str(r.target)), n["weight_grid"]: self.ui.display.copy(r.target), **off}
        from loratrainer.gui.i18n import md

        return {n["grid_message"]: t("results.grid_failed", detail=md(r.error())), **off}

    def cancel_weight_grid(self) -> dict:
        import gradio as gr

        n = self.ui.named
        if not self.renders.cancel():
            return {n["grid_message"]: self.t("results.grid_nothing")}
        return {n["grid_message"]: self.t("results.grid_cancelled"), n["grid_timer"]: gr.Timer(active=False),
                n["grid_cancel"]: gr.update(interactive=False)}


def _download_update(path: str | None):
    import gradio as gr

    return gr.update(value=path, interactive=path is not None)


def build(ui: UiContext) -> ResultsHandlers:
    import gradio as gr

    t, n, h = ui.t, ui.named, ResultsHandlers(ui)
    with gr.Row(equal_height=True):
        n["results_run"] = gr.Dropdown(label=t("results.run"), choices=[], scale=4, elem_id="results-run")
        refresh = gr.Button(t("results.refresh"), scale=1, elem_id="results-refresh")
    n["results_summary"] = gr.Markdown(t("results.none"), elem_id="results-summary")
    n["results_records"] = gr.State([])
    n["results_newest"] = gr.State(None)  # the newest run when the list was last shown: a newer one is shown by itself
    n["results_files"] = gr.Dataframe(
        headers=[t("results.col_file"), t("results.col_epoch"), t("results.col_step"), t("results.col_loss"), t("results.col_val_loss"),
                 t("results.col_time"), t("results.col_size")],
        datatype=["str", "str", "number", "str", "str", "str", "str"], interactive=False, wrap=False, label=t("results.files"),
        elem_id="results-files", column_widths=["28%", "14%", "7%", "12%", "14%", "16%", "9%"],
    )
    with gr.Row(equal_height=False):
        n["results_file_path"] = gr.Textbox(label=t("results.file_path"), info=t("results.file_path_help"), interactive=False, buttons=["copy"],
                                            elem_id="results-file-path", scale=2)
        n["results_meta"] = gr.JSON(label=t("results.metadata"), elem_id="results-meta", open=False, scale=3)
    with gr.Row(equal_height=True):
        n["results_download"] = gr.DownloadButton(t("results.download_file"), value=None, interactive=False, elem_id="results-download")
        zip_button = gr.Button(t("results.zip_button"), elem_id="results-zip-button")
        n["results_zip"] = gr.File(label=t("results.zip_file"), interactive=False, elem_id="results-zip")
    n["results_paths"] = gr.Textbox(label=t("results.paths"), info=t("results.paths_help"), lines=3, interactive=False, buttons=["copy"],
                                    elem_id="results-paths")
    with gr.Row():
        open_output = gr.Button(t("results.open_folder"), elem_id="results-open-folder")
        tensorboard = gr.Button(t("results.tensorboard"), elem_id="results-tensorboard")
    n["results_tools_message"] = gr.Markdown(elem_id="results-tools-message")
    n["results_samples"] = gr.Gallery(label=t("results.samples"), columns=6, height=300, object_fit="contain", elem_id="results-samples")
    with gr.Accordion(t("results.sample_grid_section"), open=True, elem_id="sample-grid-section"):
        gr.Markdown(t("results.sample_grid_intro"))
        sample_button = gr.Button(t("results.sample_grid_button"), elem_id="sample-grid-button")
        n["sample_grid_message"] = gr.Markdown(elem_id="sample-grid-message")
        n["sample_grid"] = gr.Image(type="filepath", interactive=False, show_label=False, elem_id="sample-grid", buttons=["download", "fullscreen"])
    with gr.Accordion(t("results.weight_grid_section"), open=True, elem_id="weight-grid-section"):
        gr.Markdown(t("results.weight_grid_intro"))
        n["grid_files"] = gr.CheckboxGroup(label=t("results.grid_files"), choices=[], elem_id="grid-files")
        with gr.Row():
            n["grid_weights"] = gr.Textbox(DEFAULT_WEIGHTS, label=t("results.grid_weights"), info=t("results.grid_weights_help"), elem_id="grid-weights")
            n["grid_seed"] = gr.Number(1234, label=t("results.grid_seed"), precision=0, elem_id="grid-seed")
            n["grid_steps"] = gr.Number(20, label=t("results.grid_steps"), precision=0, elem_id="grid-steps")
            n["grid_width"] = gr.Number(512, label=t("results.grid_width"), precision=0, elem_id="grid-width")
            n["grid_height"] = gr.Number(512, label=t("results.grid_height"), precision=0, elem_id="grid-height")
        n["grid_prompts"] = gr.Textbox(label=t("results.grid_prompts"), info=t("results.grid_prompts_help"), lines=2, elem_id="grid-prompts")
        with gr.Row():
            render = gr.Button(t("results.grid_render"), variant="primary", elem_id="grid-render")
            n["grid_cancel"] = gr.Button(t("results.grid_cancel"), interactive=False, elem_id="grid-cancel")
        n["grid_message"] = gr.Markdown(elem_id="grid-message")
        n["weight_grid"] = gr.Image(type="filepath", interactive=False, show_label=False, elem_id="weight-grid", buttons=["download", "fullscreen"])
        n["grid_timer"] = gr.Timer(1.0, active=False)
    outputs = [n["results_run"]] + [n[k] for k in RESULTS_OUTPUTS]
    refresh.click(h.refresh_runs, inputs=[n["results_run"]], outputs=outputs, api_name="results")
    keep_outputs = outputs + [n["results_newest"]]
    n["results_run"].input(h.show_run, inputs=[n["results_run"]], outputs=outputs[1:], api_visibility="private")
    def on_select(records, evt):
        return h.select_file(records, evt)

    on_select.__annotations__ = {"evt": gr.SelectData}  # a real class: Gradio finds the event data by annotation
    n["results_files"].select(on_select, inputs=[n["results_records"]],
                              outputs=[n["results_meta"], n["results_file_path"], n["results_download"]], api_visibility="private")
    zip_button.click(h.zip_run, inputs=[n["results_run"]], outputs=[n["results_zip"], n["results_tools_message"]], api_visibility="private")
    open_output.click(h.open_output, inputs=[n["results_run"]], outputs=[n["results_tools_message"]], api_visibility="private")
    tensorboard.click(h.tensorboard, inputs=[n["results_run"]], outputs=[n["results_tools_message"]], api_visibility="private")
    sample_button.click(h.make_sample_grid, inputs=[n["results_run"]], outputs=[n["sample_grid_message"], n["sample_grid"]], api_visibility="private")
    grid_inputs = [n[k] for k in ("results_run", "grid_files", "grid_weights", "grid_prompts", "grid_seed", "grid_steps", "grid_width", "grid_height")]
    grid_status = [n["grid_message"], n["grid_timer"], n["grid_cancel"], n["weight_grid"]]
    render.click(h.start_weight_grid, inputs=grid_inputs, outputs=grid_status, api_visibility="private")
    n["grid_cancel"].click(h.cancel_weight_grid, outputs=grid_status, api_visibility="private")
    n["grid_timer"].tick(h.poll_weight_grid, outputs=grid_status, api_visibility="private", show_progress="hidden")
    # a run started while the tab is open is shown without Refresh (issue 22), when the newest run was shown
    n["results_timer"] = gr.Timer(FOLLOW_S)
    n["results_timer"].tick(h.follow_newest, inputs=[n["results_run"], n["results_newest"]], outputs=keep_outputs,
                            api_visibility="private", show_progress="hidden")
    ui.on_load(h.keep_run, inputs=[n["results_run"], n["results_newest"]], outputs=keep_outputs)
    ui.after_build(lambda: n["tab_results"].select(h.keep_run, inputs=[n["results_run"], n["results_newest"]], outputs=keep_outputs,
                                                   api_visibility="private"))
    return h
