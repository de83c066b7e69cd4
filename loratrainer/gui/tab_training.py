"""Training tab: every schema setting (Basic, then one Advanced accordion per group), presets and config files,
Start / Stop / Show command, and the live view of the run (status, progress, loss chart, samples, log).

Settings are bound by name: handlers take the set of field components and read `{component: value}` through
UiContext; the folder fields live on the Dataset tab and are part of the same set.
"""

from __future__ import annotations

from pathlib import Path

from loratrainer.config import GROUPS, save_config
from loratrainer.errors import UserError
from loratrainer.gui import filebrowser, run_view
from loratrainer.gui.context import UiContext
from loratrainer.gui.i18n import md
from loratrainer.gui.form import basic_paths, specs_by_path

# What a loaded config file keeps from the page unless it sets it (issue 22: a Kohya file emptied them).
PAGE_PATHS = ("folders.train_data_dir", "folders.reg_data_dir", "folders.validation_data_dir", "folders.output_dir", "folders.logging_dir", "folders.output_name",
              "model.pretrained_model_name_or_path", "model.vae")
# the base model and the settings its family decides (gui/model_family.FAMILY_DEFAULTS)
FAMILY_FIELDS = ("model.pretrained_model_name_or_path", "buckets.max_resolution", "buckets.min_bucket_reso", "buckets.max_bucket_reso")
_FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


class TrainingHandlers:
    """The tab's event handlers; plain methods so tests call them directly with {component: value} dicts."""

    def __init__(self, ui: UiContext):
        self.ui = ui
        self.t = ui.t

    # -- presets and config files --------------------------------------------------------------------------

    def preset_choices(self) -> list[tuple[str, str]]:
        from loratrainer.config.presets import list_presets

        try:
            presets = list_presets()
        except UserError:
            return []
        tag = {True: self.t("presets.shipped"), False: self.t("presets.user")}
        return [(f"{p.name} ({tag[p.shipped]})", str(p.path)) for p in presets]

    def load_preset(self, data: dict) -> dict:
        from loratrainer.config.presets import apply_preset, load_preset

        chosen = data[self.ui.named["preset"]]
        message = self.ui.named["config_message"]
        if not chosen:
            return {message: self.t("presets.choose_first")}
        try:
            config = apply_preset(self.ui.read_config(data), load_preset(chosen))
        except UserError as exc:
            return {message: self.t.error(exc)}
        from loratrainer.config.presets import list_presets

        name = next((p.name for p in list_presets() if str(p.path) == str(chosen)), Path(chosen).stem)  # as the list shows it
        return {**self.ui.show_config(config), message: self.t("presets.loaded", name=name)}

    def save_preset(self, data: dict) -> dict:
        from loratrainer.config.presets import save_user_preset

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
        from loratrainer.config.presets import load_any_config

        upload = data.get(self.ui.named["config_upload"])
        path = upload or (data[self.ui.named["config_path"]] or "").strip()
        message = self.ui.named["config_message"]
        if not path:
            return {message: self.t("config.path_missing")}
        try:
            config, report = load_any_config(path)
        except UserError as exc:
            return {message: self.t.error(exc)}
        config, changed = self._keep_page_paths(data, config, path)
        name = Path(path).name  # Gradio keeps an upload's name on its temporary copy
        report.source = name  # so the report names the file, not the temporary folder
        lines = report.lines(self.t.message)
        text = self.t("config.loaded_kohya" if report.format == "kohya" else "config.loaded", path=name)
        text += " " + (self.t("config.changed_paths", labels=", ".join(self.t.label(p) for p in changed)) if changed
                       else self.t("config.kept_paths"))
        if len(lines) > 1:
            text += "\n\n```\n" + "\n".join(lines) + "\n```"
        return {**self.ui.show_config(config), message: text}

    def _keep_page_paths(self, data: dict, config, path: str):
        """(config, changed paths): the folders, model and output name on the page are kept unless the file gives
        them a value (a Kohya file always has the keys, often empty, issue 22), as loading a preset keeps them."""
        from loratrainer.config import get_value, with_values
        from loratrainer.config.presets import read_json_object

        try:
            page = self.ui.read_config(data)
            raw = read_json_object(path)
        except (UserError, OSError):
            return config, []
        keep, changed = {}, []
        for key in PAGE_PATHS:
            group, leaf = key.split(".")
            given = raw.get(leaf) if leaf in raw else (raw.get(group) or {}).get(leaf) if isinstance(raw.get(group), dict) else None
            if given is None or (isinstance(given, str) and not given.strip()):
                keep[key] = get_value(page, key)
            elif get_value(config, key) != get_value(page, key):
                changed.append(key)
        try:
            return with_values(config, keep), changed
        except (UserError, ValueError):
            return config, changed

    def save_file(self, data: dict, kohya: bool = False) -> dict:
        """Save our JSON (or, with kohya=True, a Kohya GUI config); an existing file is backed up first as
        <name>.<YYYYmmdd-HHMMSS>.bak (a user's files are sacred)."""
        from loratrainer.files import atomic_write
        from loratrainer.config.kohya import export_kohya, kohya_to_json

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
                from loratrainer.config.presets import backup_file

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
        """What can be run: the page's settings written to a config file, `loratrainer train --config FILE`, and
        the accelerate command that becomes (its run folder is named when the run starts). It runs Start's checks
        first, as `loratrainer train --print-command` does: settings Start would refuse get the refusal, in the
        message under the buttons, and no command. What Start would ask about (launch.start.start_warnings) is said
        above the command, in the page's language, as `loratrainer train` prints it before it starts."""
        import re
        from datetime import datetime

        from loratrainer.run.files import run_folder
        from loratrainer.launch.start import build_command, format_command, preflight

        n = self.ui.named
        box, message = n["command"], n["run_message"]
        try:
            config = self.ui.read_config(data)
            warnings: list = []
            resolved = preflight(config, warnings)  # the output name as the run would get it (renamed when the file exists)
        except UserError as exc:
            return {box: "", message: self.refusal(exc, "command.refused")}
        name = re.sub(r"[^\w.-]+", "_", config.folders.output_name) or "config"
        target = Path(self.ui.jobs.state_dir) / "configs" / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.json"
        try:
            save_config(config, target)
        except OSError as exc:
            return {box: "", message: self.t.error(exc)}
        run_dir = run_folder(resolved, "<YYYYmmdd-HHMMSS>")
        # shell comments, so the box stays runnable as copied
        said = [self.t("command.warnings")] + [f"# - {self.t.message(w)}" for w in warnings] + [""] if warnings else []
        lines = said + [self.t("command.saved", path=str(target)), format_command(loratrainer_command() + ["train", "--config", str(target)]), "",
                 self.t("command.becomes"), format_command(build_command(resolved, run_dir))]
        from loratrainer.launch.precision import precision_here

        used = precision_here(resolved)
        if used != resolved.precision.mixed_precision:  # what will run on this machine, not only what was asked
            lines += ["", self.t("command.precision_cpu", asked=resolved.precision.mixed_precision)]
        return {box: "\n".join(lines), message: ""}

    def start(self, data: dict, confirmed: bool = False) -> dict:
        """Start a run. The answer goes to the message under the buttons, never over the run's status: Start
        pressed during a run leaves that run's live view alone; a refused first start clears the previous run's
        progress, chart and samples, so they do not sit under the refusal as if they belonged to it. Images that
        would be skipped or an absurd learning rate are asked about first (Start anyway / Cancel)."""
        n = self.ui.named
        hide = {n["confirm_panel"]: _visible(False)}
        try:
            config = self.ui.read_config(data)
            if not confirmed and self.ui.jobs.active() is None:
                from loratrainer.launch.start import preflight

                questions: list = []  # launch.start.start_warnings: the same `loratrainer train` prints
                preflight(config, questions)  # what Start would refuse (an 8-bit optimizer without CUDA, ...) before any question
                if questions:
                    listing = "\n".join(f"- {md(self.t.message(q))}" for q in questions)
                    return {n["confirm_text"]: self.t("start_check.ask", listing=listing), n["confirm_panel"]: _visible(True), n["run_message"]: ""}
            run_dir = self.ui.jobs.start(config)
        except UserError as exc:
            message = {n["run_message"]: self.refusal(exc), **hide}
            if self.ui.jobs.active() is not None:
                return message
            # the status says what happened, not "No run yet" on a page that has run before (issue 22)
            return {**self.refresh(None, -1), **message, n["status"]: self.t("status.not_started")}
        return {**self.refresh(str(run_dir), -1), n["run_message"]: "", **hide}

    def start_anyway(self, data: dict) -> dict:
        return self.start(data, confirmed=True)

    def run_summary(self, data: dict) -> str:
        """ "N images, M skipped, S steps" from the Dataset tab's last check, recounted as the settings change."""
        from loratrainer.data.steps import recount_steps
        from loratrainer.gui.tab_dataset import concept_rows

        report = data.get(self.ui.named.get("report"))
        if report is None:
            return self.t("training.summary_unchecked")
        values = self.ui.paths_of(data)
        try:
            s = recount_steps(report, values)
        except ValueError:
            return self.t("steps.invalid")
        text = self.t("training.summary", images=report.images, skipped=len(report.skipped), steps=s.total_steps, epochs=s.epochs,
                      per_epoch=s.steps_per_epoch)
        if str(values.get("folders.dataset_config") or "").strip():  # which subsets train, with their repeats
            subsets = ", ".join(f"`{row[0]}` × {row[1]}" for row in concept_rows(report))
            text += " " + self.t("training.summary_subsets", subsets=subsets, batch=s.batch_size)
        return ("⚠ " if report.skipped else "") + text

    def refusal(self, exc: Exception, key: str = "start.refused") -> str:
        """Why Start refused (or, with key="command.refused", would refuse), in the page's language; the dataset
        check's problems keep their lines in a code block."""
        from loratrainer.launch.start import LaunchRefused

        report = exc.report if isinstance(exc, LaunchRefused) else None
        if report is not None:
            from loratrainer.messages import Msg

            head = self.t.message(Msg.of("launch.dataset_failed"))
            labels = {s: self.t(f"check.severity.{s}") for s in ("error", "warning", "info")}
            rest = "\n".join(f"{labels[p.severity]}: {self.t.label_or_path(str(p.path))}: {self.t.problem(p)}" for p in report.sorted_problems())
        elif isinstance(exc, UserError) and (exc.msg is not None or exc.fields):
            head, rest = self.t.error_text(exc), ""
        else:
            head, _, rest = str(exc).partition("\n")
        head = head[:1].upper() + head[1:]  # a sentence after "Not started." (messages are written to follow "error: ")
        message = self.t(key, error=md(head))
        return message + ("\n\n```\n" + rest.replace("`", "'") + "\n```" if rest.strip() else "")

    def stop(self, run_dir: str | None) -> dict:
        """Ask the run to stop. The status line itself says "Stopping…" until the trainer has saved and ended
        (status_line reads the STOP file), so no later tick puts the old status back."""
        n = self.ui.named
        if not run_dir or not self.ui.jobs.view(run_dir).alive:
            return {n["run_message"]: self.t("stop.nothing")}
        self.ui.jobs.stop(run_dir)
        return {n["run_message"]: "", n["status"]: run_view.status_line(self.ui.jobs.view(run_dir), self.t)}

    def stop_now(self, run_dir: str | None) -> dict:
        """End the run at once, without saving (offered when a stop has waited STOP_NOW_AFTER_S): every process of
        the run's tree is killed through launch/processes.py."""
        n = self.ui.named
        if not run_dir or not self.ui.jobs.view(run_dir).alive:
            return {n["run_message"]: self.t("stop.nothing")}
        self.ui.jobs.stop_now(run_dir)
        return {n["run_message"]: "", **self.refresh(run_dir, -1)}

    def resume(self, run_dir: str | None) -> dict:
        """Fill Resume from saved state with the state folder saved at the stop, and open its section."""
        import gradio as gr

        n = self.ui.named
        state = run_view.resume_state(self.ui.jobs.view(run_dir)) if run_dir else ""
        if not state:
            return {n["run_message"]: self.t("run.resume_none")}
        out = {self.ui.fields["saving.resume"]: state, n["run_message"]: self.t("run.resume_filled", state=state)}
        if "advanced_saving" in n:
            out[n["advanced_saving"]] = gr.update(open=True)
        return out

    def attach(self) -> dict:
        """On page load: the running job (or the newest run) comes back, with the timer on when it runs, and
        with its settings (the run folder's config.json): the form shows what is training, or, after a run
        ended, what was run last, so a reload does not fall back to the defaults."""
        from loratrainer.config import ConfigError, load_config
        from loratrainer.run.files import CONFIG_FILE

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
        if view is None or not view.alive:  # the queue's running run, when nothing of the page's runs
            queued = self.ui.jobs.queue_run()
            if queued is not None and str(queued) != run_dir:
                run_dir, view, samples_seen = str(queued), self.ui.jobs.view(queued), -1
        out = {
            n["run_dir"]: run_dir,
            n["status"]: run_view.status_line(view, self.t),
            n["progress"]: run_view.progress_html(view, self.t),
            n["loss_plot"]: run_view.loss_frame(view, self.t),
            n["log"]: view.log_tail if view else "",
            n["run_notes"]: run_view.run_notes(view, self.t),
            # on while the run goes, and while the queue has a run: the tab moves to the queue's next run by itself
            n["timer"]: gr.Timer(active=bool(view and view.alive) or self.ui.jobs.queue_busy()),
            n["samples_seen"]: len(view.samples) if view else 0,
            # Stop is red and pressable only while a run goes
            n["stop_button"]: gr.update(interactive=bool(view and view.alive), variant="stop" if view and view.alive else "secondary"),
            n["stop_now_button"]: gr.update(visible=run_view.offers_stop_now(view)),
            n["resume_button"]: gr.update(visible=bool(run_view.resume_state(view))),
        }
        if view is None or len(view.samples) != samples_seen:
            out[n["gallery"]] = run_view.sample_gallery(view, self.ui.display, self.t)
        else:
            out[n["gallery"]] = gr.skip()
        return out

    def optimizer_note(self, optimizer: str) -> dict:
        """Before Start: an 8-bit optimizer that cannot run here (no CUDA GPU) is said beside the buttons, with a
        button that picks the plain equivalent (machine/eight_bit.py; Start refuses it the same way)."""
        import gradio as gr

        from loratrainer.config.optimizer_table import EIGHT_BIT
        from loratrainer.machine.eight_bit import page_refusal

        n = self.ui.named
        instead = EIGHT_BIT.get(optimizer or "")
        if not instead or page_refusal(optimizer) is None:
            return {n["optimizer_note"]: "", n["optimizer_fix"]: gr.update(visible=False)}
        note = self.t("optimizer.no_cuda", optimizer=optimizer, label=self.t.label("optimizer.optimizer"), instead=instead)
        return {n["optimizer_note"]: note, n["optimizer_fix"]: gr.update(visible=True, value=self.t("optimizer.use_instead", instead=instead))}

    def use_instead(self, optimizer: str) -> str:
        from loratrainer.config.optimizer_table import EIGHT_BIT

        return EIGHT_BIT.get(optimizer or "", optimizer)

    def rate_read(self, path: str, value) -> dict:
        """A learning-rate box's help line, followed by what was read from it ("read as 0.0001") when the text is
        not already written that way, or by why it cannot be read."""
        import gradio as gr

        from loratrainer.gui.form import rate_text, read_rate

        number = read_rate(value)
        info = self.t.help(path)
        if isinstance(number, float):
            if rate_text(number) != (value or "").strip():
                info += " " + self.t("form.rate_read", value=rate_text(number))
        elif number is not None:
            info += " " + self.t("form.rate_unreadable", text=str(value).strip())
        return gr.update(info=info)

    # -- the model's family --------------------------------------------------------------------------------

    def model_changed(self, data: dict) -> dict:
        """The model box's note (what the path holds, and its family with the resolution it trains at) and the
        family-defaults button, shown only when pressing it would change something."""
        import gradio as gr

        from loratrainer.gui.model_family import defaults_differ, family_note, family_of

        fields, n = self.ui.fields, self.ui.named
        path, resolution = data[fields[FAMILY_FIELDS[0]]], data[fields["buckets.max_resolution"]]
        family = family_of(path)
        note = filebrowser.check_path(path, "model", self.t)
        extra = family_note(family, resolution, self.t)
        show = defaults_differ(family, {p: data[fields[p]] for p in FAMILY_FIELDS[1:]})
        label = self.t("training.use_family_defaults", family=_FAMILY_NAMES.get(family or "", ""))
        return {n["model_note"]: note + (" " + extra if extra else ""), n["family_defaults"]: gr.update(visible=show, value=label)}

    def use_family_defaults(self, data: dict) -> dict:
        """The chosen model's family defaults for resolution and buckets, said in the note (pressed by the user)."""
        import gradio as gr

        from loratrainer.gui.model_family import FAMILY_DEFAULTS, family_of

        fields, n = self.ui.fields, self.ui.named
        family = family_of(data[fields[FAMILY_FIELDS[0]]])
        if family not in FAMILY_DEFAULTS:
            return {n["family_defaults"]: gr.update(visible=False)}
        wanted = FAMILY_DEFAULTS[family]
        said = self.t("training.family_defaults_applied", family=_FAMILY_NAMES[family], resolution=wanted["buckets.max_resolution"],
                      min_reso=wanted["buckets.min_bucket_reso"], max_reso=wanted["buckets.max_bucket_reso"])
        return {**{fields[p]: v for p, v in wanted.items()}, n["model_note"]: said, n["family_defaults"]: gr.update(visible=False)}

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
    live = [n[k] for k in ("run_dir", "status", "progress", "loss_plot", "log", "timer", "samples_seen", "gallery", "stop_button", "run_notes",
                           "stop_now_button", "resume_button")]
    buttons["load_preset"].click(h.load_preset, inputs=cfg() | {n["preset"]}, outputs=config_outputs, api_name="load_preset")
    buttons["save_preset"].click(h.save_preset, inputs=cfg() | {n["preset_name"]}, outputs=[n["config_message"], n["preset"]], api_name="save_preset")
    buttons["load_file"].click(h.load_file, inputs=cfg() | {n["config_path"], n["config_upload"]}, outputs=config_outputs, api_name="load_config")
    n["config_upload"].upload(h.load_file, inputs=cfg() | {n["config_path"], n["config_upload"]}, outputs=config_outputs, api_visibility="private")
    buttons["save_file"].click(h.save_file, inputs=cfg() | {n["config_path"]}, outputs=[n["config_message"]], api_name="save_config")
    buttons["save_kohya"].click(h.save_kohya, inputs=cfg() | {n["config_path"]}, outputs=[n["config_message"]], api_name="save_kohya_config")
    buttons["show_command"].click(h.show_command, inputs=cfg(), outputs=[n["command"], n["run_message"]], api_name="show_command")
    start_outputs = live + [n["run_message"], n["confirm_panel"], n["confirm_text"]]
    buttons["start"].click(h.start, inputs=cfg(), outputs=start_outputs, api_name="start")
    buttons["start_anyway"].click(h.start_anyway, inputs=cfg(), outputs=start_outputs, api_visibility="private")
    buttons["cancel_start"].click(lambda: _visible(False), outputs=[n["confirm_panel"]], api_visibility="private")

    def wire_summary() -> None:  # the Dataset tab's check result is known after every tab is built
        from loratrainer.data.steps import STEP_SETTINGS

        inputs = {ui.fields[p] for p in STEP_SETTINGS} | {n["report"], ui.fields["folders.dataset_config"]}
        gr.on([n["report"].change] + [ui.fields[p].change for p in STEP_SETTINGS], h.run_summary, inputs=inputs, outputs=[n["run_summary"]],
              trigger_mode="always_last", show_progress="hidden", api_visibility="private")

    ui.after_build(wire_summary)
    from loratrainer.gui.form import is_rate

    for path, spec in specs_by_path().items():
        if is_rate(spec) and path in ui.fields:
            box = ui.fields[path]
            box.change(lambda v, p=path: h.rate_read(p, v), inputs=[box], outputs=[box], show_progress="hidden", api_visibility="private")
    optimizer = ui.fields["optimizer.optimizer"]
    note_outputs = [n["optimizer_note"], n["optimizer_fix"]]
    optimizer.change(h.optimizer_note, inputs=[optimizer], outputs=note_outputs, show_progress="hidden", api_visibility="private")
    ui.on_load(h.optimizer_note, inputs=[optimizer], outputs=note_outputs)
    n["optimizer_fix"].click(h.use_instead, inputs=[optimizer], outputs=[optimizer], api_visibility="private")

    # the model's family (read from its weights) and the resolution: the note under the model box and the
    # family-defaults button; the button is the only thing that changes settings here
    family_inputs = {ui.fields[p] for p in FAMILY_FIELDS}
    family_outputs = [n["model_note"], n["family_defaults"]]
    gr.on([ui.fields[p].change for p in FAMILY_FIELDS], h.model_changed, inputs=family_inputs, outputs=family_outputs,
          trigger_mode="always_last", show_progress="hidden", api_visibility="private")
    ui.on_load(h.model_changed, inputs=family_inputs, outputs=family_outputs)
    n["family_defaults"].click(h.use_family_defaults, inputs=family_inputs,
                               outputs=[ui.fields[p] for p in FAMILY_FIELDS[1:]] + family_outputs, api_visibility="private")
    buttons["stop"].click(h.stop, inputs=[n["run_dir"]], outputs=[n["run_message"], n["status"]], api_name="stop")
    buttons["stop_now"].click(h.stop_now, inputs=[n["run_dir"]], outputs=live + [n["run_message"]], api_name="stop_now")
    resume_outputs = [ui.fields["saving.resume"], n["run_message"]] + ([n["advanced_saving"]] if "advanced_saving" in n else [])
    buttons["resume"].click(h.resume, inputs=[n["run_dir"]], outputs=resume_outputs, api_name="resume")
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
        ui.field(basic[0])
        ui.named["model_note"] = gr.Markdown(elem_id="check-model")
        ui.named["family_defaults"] = gr.Button(t("training.use_family_defaults", family="SDXL"), visible=False, size="sm", elem_id="family-defaults")
        _rows(ui, gr, basic[1:-1])
        ui.field(basic[-1])
    specs = specs_by_path()
    for group in GROUPS:
        rest = [p for p, s in specs.items() if s.group == group and p not in ui.fields and p not in basic]
        if rest:
            with gr.Accordion(t(f"group.{group}"), open=False, elem_id=f"advanced-{group}") as ui.named[f"advanced_{group}"]:
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
        # Other buttons that start runs (a queue) go in this row; their answers go to run_message too.
        start = gr.Button(t("run.start"), variant="primary", elem_id="run-start")
        n["add_to_queue"] = gr.Button(t("queue.add"), elem_id="run-add-to-queue")  # wired by tab_queue
        stop = n["stop_button"] = gr.Button(t("run.stop"), variant="secondary", interactive=False, elem_id="run-stop")
        # offered when a stop has waited too long (gui/progress.STOP_NOW_AFTER_S): ends the run without saving
        stop_now = n["stop_now_button"] = gr.Button(t("run.stop_now"), variant="stop", visible=False, elem_id="run-stop-now")
        resume = n["resume_button"] = gr.Button(t("run.resume"), visible=False, elem_id="run-resume")
        show_command = gr.Button(t("run.show_command"), elem_id="run-show-command")
    n["run_summary"] = gr.Markdown(t("training.summary_unchecked"), elem_id="run-summary")
    with gr.Row(equal_height=True):
        n["optimizer_note"] = gr.Markdown(elem_id="optimizer-note", scale=4)
        n["optimizer_fix"] = gr.Button(t("optimizer.use_instead", instead="AdamW"), visible=False, elem_id="optimizer-fix", scale=1)
    with gr.Group(visible=False, elem_id="confirm-start") as n["confirm_panel"]:
        n["confirm_text"] = gr.Markdown(elem_id="confirm-text")
        with gr.Row():
            start_anyway = gr.Button(t("start_check.start_anyway"), variant="primary", elem_id="run-start-anyway")
            cancel_start = gr.Button(t("start_check.cancel"), elem_id="run-start-cancel")
    # What a button answered (a refusal, "no run is going"): apart from the run's own status below.
    n["run_message"] = gr.Markdown(elem_id="run-message")
    n["command"] = gr.Textbox(label=t("run.command"), lines=2, interactive=False, buttons=["copy"], elem_id="run-command")
    n["status"] = gr.Markdown(t("status.idle"), elem_id="run-status", elem_classes=["lt-status", "lt-live"])
    n["progress"] = gr.HTML(elem_id="run-progress", elem_classes=["lt-live"])
    n["run_notes"] = gr.Markdown(elem_id="run-notes", elem_classes=["lt-live"])
    with gr.Row():
        n["loss_plot"] = gr.LinePlot(run_view.loss_frame(None, t), x="step", y="loss", color="series", title=t("run.loss_chart"), x_title=t("run.chart_step"),
                                   y_title=t("run.chart_loss"), height=260, elem_id="run-loss",
                                   elem_classes=["lt-live"])
        n["gallery"] = gr.Gallery(label=t("run.samples"), columns=3, height=260, object_fit="contain", elem_id="run-samples", elem_classes=["lt-live"])
    # The box grows to the whole tail (room for wrapped lines): a scrolled box showed the oldest lines first.
    from loratrainer.gui.jobs import LOG_TAIL_LINES

    n["log"] = gr.Textbox(label=t("run.log"), lines=10, max_lines=2 * LOG_TAIL_LINES, interactive=False, autoscroll=True, elem_id="run-log",
                          elem_classes=["lt-log", "lt-live"])
    n["run_dir"] = gr.State(None)
    n["samples_seen"] = gr.State(-1)
    n["timer"] = gr.Timer(1.0, active=False)
    return {"start": start, "stop": stop, "stop_now": stop_now, "resume": resume, "show_command": show_command, "start_anyway": start_anyway, "cancel_start": cancel_start}


def _visible(shown: bool):
    import gradio as gr

    return gr.update(visible=shown)


def loratrainer_command() -> list[str]:
    """How this machine runs `loratrainer`: the installed script, else this Python with -m."""
    import shutil
    import sys

    script = shutil.which("loratrainer")
    return [script] if script else [sys.executable, "-m", "loratrainer"]
