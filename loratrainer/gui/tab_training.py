"""Training tab: every schema setting (Basic, then one Advanced accordion per group), presets and config files,
Start / Stop / Show command, and the live view of the run (status, progress, loss chart, samples, log).

Settings are bound by name: handlers take the set of field components and read `{component: value}` through
UiContext; the folder fields live on the Dataset tab and are part of the same set.
"""

from __future__ import annotations

from pathlib import Path

from loratrainer.config import GROUPS, save_config
from loratrainer.errors import UserError
from loratrainer.gui import filebrowser, progress
from loratrainer.gui.context import UiContext
from loratrainer.gui.i18n import md
from loratrainer.gui.form import basic_paths, specs_by_path

class TrainingHandlers:
    """The tab's event handlers; plain methods so tests call them directly with {component: value} dicts."""

    def __init__(self, ui: UiContext):
        self.ui = ui
        self.t = ui.t

    # -- presets and config files --------------------------------------------------------------------------

    def preset_choices(self) -> list[tuple[str, str]]:
        from loratrainer.presets import list_presets

        try:
            presets = list_presets()
        except UserError:
            return []
        tag = {True: self.t("presets.shipped"), False: self.t("presets.user")}
        return [(f"{p.name} ({tag[p.shipped]})", str(p.path)) for p in presets]

    def load_preset(self, data: dict) -> dict:
        from loratrainer.presets import apply_preset, load_preset

        chosen = data[self.ui.named["preset"]]
        message = self.ui.named["config_message"]
        if not chosen:
            return {message: self.t("presets.choose_first")}
        try:
            config = apply_preset(self.ui.read_config(data), load_preset(chosen))
        except UserError as exc:
            return {message: self.t.error(exc)}
        return {**self.ui.show_config(config), message: self.t("presets.loaded", name=Path(chosen).stem)}

    def save_preset(self, data: dict) -> dict:
        from loratrainer.presets import save_user_preset

        name = (data[self.ui.named["preset_name"]] or "").strip()
        message = self.ui.named["config_message"]
        if not name:
            return {message: self.t("presets.name_missing")}
        try:
            path = save_user_preset(self.ui.read_config(data), name)
        except (UserError, OSError, FileExistsError) as exc:
            return {message: self.t.error(exc)}
        import gradio as gr

        return {message: self.t("presets.saved", path=str(path)), self.ui.named["preset"]: gr.update(choices=self.preset_choices(), value=str(path))}

    def load_file(self, data: dict) -> dict:
        """Our JSON or a Kohya GUI config: shows what was coerced, migrated or ignored."""
        from loratrainer.presets import load_any_config

        upload = data.get(self.ui.named["config_upload"])
        path = upload or (data[self.ui.named["config_path"]] or "").strip()
        message = self.ui.named["config_message"]
        if not path:
            return {message: self.t("config.path_missing")}
        try:
            config, report = load_any_config(path)
        except UserError as exc:
            return {message: self.t.error(exc)}
        lines = report.lines(self.t.message)
        text = self.t("config.loaded_kohya" if report.format == "kohya" else "config.loaded", path=Path(path).name)
        if len(lines) > 1:
            text += "\n\n```\n" + "\n".join(lines) + "\n```"
        return {**self.ui.show_config(config), message: text}

    def save_file(self, data: dict, kohya: bool = False) -> dict:
        """Save our JSON (or, with kohya=True, a Kohya GUI config); an existing file is backed up first as
        <name>.<YYYYmmdd-HHMMSS>.bak (a user's files are sacred)."""
        from loratrainer.files import atomic_write
        from loratrainer.kohya import export_kohya, kohya_to_json

        path = (data[self.ui.named["config_path"]] or "").strip()
        message = self.ui.named["config_message"]
        if not path:
            return {message: self.t("config.path_missing")}
        notes = []
        try:
            config = self.ui.read_config(data)
            target = Path(path).expanduser()
            if target.suffix.lower() != ".json":
                target = target.with_name(target.name + ".json")
            backup = ""
            if target.exists():  # a timestamped copy as presets make: a second save keeps the first original
                from loratrainer.presets import backup_file

                kept = backup_file(target)
                backup = self.t("config.backup", path=kept.name if kept else target.name)
            if kohya:
                exported, report = export_kohya(config)
                atomic_write(target, kohya_to_json(exported))
                notes = report.lines(self.t.message)
            else:
                save_config(config, target)
        except (UserError, OSError) as exc:
            return {message: self.t.error(exc)}
        text = self.t("config.saved_kohya" if kohya else "config.saved", path=str(target)) + (" " + backup if backup else "")
        return {message: text + ("\n\n```\n" + "\n".join(notes) + "\n```" if notes else "")}

    def save_kohya(self, data: dict) -> dict:
        return self.save_file(data, kohya=True)

    # -- the run -------------------------------------------------------------------------------------------

    def show_command(self, data: dict) -> dict:
        from loratrainer.train.launch import build_command, format_command, logging_root

        box = self.ui.named["command"]
        try:
            config = self.ui.read_config(data)
        except UserError as exc:
            return {box: self.t.error(exc)}
        run_dir = logging_root(config) / f"{config.folders.output_name}_<YYYYmmdd-HHMMSS>"
        return {box: format_command(build_command(config, run_dir))}

    def start(self, data: dict) -> dict:
        import gradio as gr

        status = self.ui.named["status"]
        try:
            run_dir = self.ui.jobs.start(self.ui.read_config(data))
        except UserError as exc:
            return {status: self.refusal(exc), self.ui.named["timer"]: gr.Timer(active=False)}
        return {**self.refresh(str(run_dir), -1), self.ui.named["timer"]: gr.Timer(active=True)}

    def refusal(self, exc: Exception) -> str:
        """Why Start refused, in the page's language; the dataset check's problems keep their lines in a code block."""
        from loratrainer.train.launch import LaunchRefused

        report = exc.report if isinstance(exc, LaunchRefused) else None
        if report is not None:
            from loratrainer.messages import Msg

            head = self.t.message(Msg.of("launch.dataset_failed"))
            labels = {s: self.t(f"check.severity.{s}") for s in ("error", "warning", "info")}
            rest = "\n".join(f"{labels[p.severity]}: {p.path}: {self.t.problem(p)}" for p in report.sorted_problems())
        elif isinstance(exc, UserError) and (exc.msg is not None or exc.fields):
            head, rest = self.t.error_text(exc), ""
        else:
            head, _, rest = str(exc).partition("\n")
        message = self.t("start.refused", error=md(head))
        return message + ("\n\n```\n" + rest.replace("`", "'") + "\n```" if rest.strip() else "")

    def stop(self, run_dir: str | None) -> str:
        if not run_dir or not self.ui.jobs.view(run_dir).alive:
            return self.t("stop.nothing")
        self.ui.jobs.stop(run_dir)
        return self.t("stop.requested", file=progress.interrupted_file(self.ui.jobs.view(run_dir)))

    def attach(self) -> dict:
        """On page load: the running job (or the newest run) comes back, with the timer on when it runs, and
        with its settings (the run folder's config.json): the form shows what is training, or, after a run
        ended, what was run last, so a reload does not fall back to the defaults."""
        from loratrainer.config import ConfigError, load_config
        from loratrainer.events import CONFIG_FILE

        run_dir = self.ui.jobs.current()
        out = self.refresh(str(run_dir) if run_dir else None, -1)
        if run_dir is not None:
            try:
                out.update(self.ui.show_config(load_config(run_dir / CONFIG_FILE)))
            except (ConfigError, OSError):
                pass  # a run folder removed or damaged by hand: the form keeps its defaults
        return out

    def refresh(self, run_dir: str | None, samples_seen: int) -> dict:
        import gradio as gr

        n = self.ui.named
        view = self.ui.jobs.view(run_dir) if run_dir else None
        out = {
            n["run_dir"]: run_dir,
            n["status"]: progress.status_line(view, self.t),
            n["progress"]: progress.progress_html(view, self.t),
            n["loss_plot"]: progress.loss_frame(view),
            n["log"]: view.log_tail if view else "",
            n["timer"]: gr.Timer(active=bool(view and view.alive)),
            n["samples_seen"]: len(view.samples) if view else 0,
        }
        if view is None or len(view.samples) != samples_seen:
            out[n["gallery"]] = progress.sample_gallery(view, self.ui.display, self.t)
        else:
            out[n["gallery"]] = gr.skip()
        return out

    def folders_summary(self, data: dict) -> str:
        values = self.ui.paths_of(data)
        rows = [f"- **{self.t.label(p)}**: `{values.get(p) or '—'}`" for p in ("folders.train_data_dir", "folders.output_dir")]
        return self.t("training.folders_from_dataset") + "\n" + "\n".join(rows)


def build(ui: UiContext) -> TrainingHandlers:
    import gradio as gr

    h, n = TrainingHandlers(ui), ui.named
    buttons = _presets_panel(ui, h, gr)
    folders_md = _settings(ui, gr)
    buttons.update(_run_panel(ui, gr))

    cfg = ui.config_inputs
    config_outputs = list(ui.fields.values()) + [n["config_message"]]
    live = [n[k] for k in ("run_dir", "status", "progress", "loss_plot", "log", "timer", "samples_seen", "gallery")]
    buttons["load_preset"].click(h.load_preset, inputs=cfg() | {n["preset"]}, outputs=config_outputs, api_name="load_preset")
    buttons["save_preset"].click(h.save_preset, inputs=cfg() | {n["preset_name"]}, outputs=[n["config_message"], n["preset"]], api_name="save_preset")
    buttons["load_file"].click(h.load_file, inputs=cfg() | {n["config_path"], n["config_upload"]}, outputs=config_outputs, api_name="load_config")
    n["config_upload"].upload(h.load_file, inputs=cfg() | {n["config_path"], n["config_upload"]}, outputs=config_outputs, api_visibility="private")
    buttons["save_file"].click(h.save_file, inputs=cfg() | {n["config_path"]}, outputs=[n["config_message"]], api_name="save_config")
    buttons["save_kohya"].click(h.save_kohya, inputs=cfg() | {n["config_path"]}, outputs=[n["config_message"]], api_name="save_kohya_config")
    buttons["show_command"].click(h.show_command, inputs=cfg(), outputs=[n["command"]], api_name="show_command")
    buttons["start"].click(h.start, inputs=cfg(), outputs=live, api_name="start")
    buttons["stop"].click(h.stop, inputs=[n["run_dir"]], outputs=[n["status"]], api_name="stop")
    n["timer"].tick(h.refresh, inputs=[n["run_dir"], n["samples_seen"]], outputs=live, api_visibility="private", show_progress="hidden")
    ui.on_load(h.attach, outputs=live + list(ui.fields.values()))
    folder_fields = [ui.fields[p] for p in ("folders.train_data_dir", "folders.output_dir") if p in ui.fields]
    if folder_fields:
        gr.on([c.change for c in folder_fields], h.folders_summary, inputs=set(folder_fields), outputs=[folders_md], api_visibility="private", show_progress="hidden")
    return h


def _presets_panel(ui: UiContext, h: TrainingHandlers, gr) -> dict:
    t, n = ui.t, ui.named
    with gr.Row():
        n["preset"] = gr.Dropdown(choices=h.preset_choices(), value=None, label=t("presets.label"), info=t("presets.help"), elem_id="preset-choice", scale=3)
        load_preset = gr.Button(t("presets.load"), elem_id="preset-load", scale=1)
        n["preset_name"] = gr.Textbox(label=t("presets.name"), scale=2, elem_id="preset-name")
        save_preset = gr.Button(t("presets.save"), scale=1, elem_id="preset-save")
    with gr.Accordion(t("config.section"), open=False, elem_id="config-files"):
        with gr.Row():
            n["config_path"] = gr.Textbox(label=t("config.path"), info=t("config.path_help"), scale=3, elem_id="config-path")
            n["config_upload"] = gr.File(label=t("config.upload"), file_types=[".json"], type="filepath", scale=2, elem_id="config-upload")
        with gr.Row():
            load_file = gr.Button(t("config.load"), elem_id="config-load")
            save_file = gr.Button(t("config.save"), elem_id="config-save")
            save_kohya = gr.Button(t("config.save_kohya_button"), elem_id="config-save-kohya")
    n["config_message"] = gr.Markdown(elem_id="config-message")
    return {"load_preset": load_preset, "save_preset": save_preset, "load_file": load_file, "save_file": save_file, "save_kohya": save_kohya}


def _settings(ui: UiContext, gr):
    """Basic settings (the tutorial's), then one Advanced accordion per schema group for everything else."""
    t = ui.t
    with gr.Accordion(t("training.basic"), open=True, elem_id="section-basic"):
        folders_md = gr.Markdown(TrainingHandlers(ui).folders_summary({}), elem_id="training-folders")
        basic = basic_paths()
        model = ui.field(basic[0])
        model_note = gr.Markdown(elem_id="check-model")
        model.change(lambda p: filebrowser.check_path(p, "model", t), inputs=[model], outputs=[model_note], trigger_mode="always_last",
                     show_progress="hidden", api_visibility="private")
        ui.on_load(lambda p: filebrowser.check_path(p, "model", t), inputs=[model], outputs=[model_note])
        _rows(ui, gr, basic[1:-1])
        ui.field(basic[-1])
    specs = specs_by_path()
    for group in GROUPS:
        rest = [p for p, s in specs.items() if s.group == group and p not in ui.fields and p not in basic]
        if rest:
            with gr.Accordion(t(f"group.{group}"), open=False, elem_id=f"advanced-{group}"):
                _rows(ui, gr, rest)
    return folders_md


def _rows(ui: UiContext, gr, paths: list[str], per_row: int = 3) -> None:
    for i in range(0, len(paths), per_row):
        with gr.Row(equal_height=False):
            for path in paths[i : i + per_row]:
                ui.field(path)


def _run_panel(ui: UiContext, gr) -> dict:
    t, n = ui.t, ui.named
    with gr.Row():
        start = gr.Button(t("run.start"), variant="primary", elem_id="run-start")
        n["add_to_queue"] = gr.Button(t("queue.add"), elem_id="run-add-to-queue")  # wired by tab_queue
        stop = gr.Button(t("run.stop"), variant="stop", elem_id="run-stop")
        show_command = gr.Button(t("run.show_command"), elem_id="run-show-command")
    n["command"] = gr.Textbox(label=t("run.command"), lines=2, interactive=False, buttons=["copy"], elem_id="run-command")
    n["status"] = gr.Markdown(t("status.idle"), elem_id="run-status", elem_classes=["lt-status"])
    n["progress"] = gr.HTML(elem_id="run-progress")
    with gr.Row():
        n["loss_plot"] = gr.LinePlot(progress.loss_frame(None), x="step", y="loss", title=t("run.loss_chart"), height=260, elem_id="run-loss")
        n["gallery"] = gr.Gallery(label=t("run.samples"), columns=3, height=260, object_fit="contain", elem_id="run-samples")
    # The box grows to the whole tail (room for wrapped lines): a scrolled box showed the oldest lines first.
    from loratrainer.gui.jobs import LOG_TAIL_LINES

    n["log"] = gr.Textbox(label=t("run.log"), lines=10, max_lines=2 * LOG_TAIL_LINES, interactive=False, autoscroll=True, elem_id="run-log",
                          elem_classes=["lt-log"])
    n["run_dir"] = gr.State(None)
    n["samples_seen"] = gr.State(-1)
    n["timer"] = gr.Timer(1.0, active=False)
    return {"start": start, "stop": stop, "show_command": show_command}
