"""Dataset tab: choose the folders (checked as you type, with an in-page browser), make a project with the
prepare tool, run the dataset check (problems with thumbnails), edit repeats per concept folder (renames
`N_name` after confirmation), and see the step calculator and the bucket preview from the real bucket
assignment (loratrainer.data.check, the same code the trainer uses)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from loratrainer.data.folders import parse_concept_name
from loratrainer.errors import UserError
from loratrainer.gui import filebrowser, upload_route
from loratrainer.gui.context import UiContext
from loratrainer.gui.form import path_checks
from loratrainer.gui.i18n import md
from loratrainer.messages import Msg, define

define({
    "dataset.repeats_not_whole": "{name}: repeats must be a whole number",
    "dataset.repeats_below_one": "{name}: repeats must be at least 1",
})

FOLDERS = path_checks("folders")  # {path: check role}: the four folder fields, each with its as-you-type check
MAX_PROBLEM_THUMBS = 24


class DatasetHandlers:
    def __init__(self, ui: UiContext):
        self.ui = ui
        self.t = ui.t

    def check_folder(self, path: str, role: str) -> str:
        # never empty: an empty note takes no height and the Browse… beside it would sit higher than this one
        return filebrowser.check_path(path, role, self.t) or self.t("check.log.empty" if role == "log" else "check.optional_empty")

    # -- prepare ---------------------------------------------------------------------------------------------

    def prepare(self, data: dict) -> dict:
        """Copy a folder of images into DEST/image/<repeats>_<name>/ with log/ and model/ beside it."""
        from loratrainer.data.prepare import prepare_project

        n = self.ui.named
        src, dest, name = ((data[n[k]] or "").strip() for k in ("prep_src", "prep_dest", "prep_name"))
        reg = (data[n["prep_reg"]] or "").strip() or None
        upload_id = str(data.get(n["prep_upload"]) or "").strip() if "prep_upload" in n else ""
        if src and upload_id:
            return {n["prep_message"]: self.t("prepare.both")}
        if not ((src or upload_id) and dest and name):
            return {n["prep_message"]: self.t("prepare.missing")}
        repeats = parse_repeats(data[n["prep_repeats"]])
        if repeats == 0:
            return {n["prep_message"]: self.t("prepare.bad_repeats", label=self.t("prepare.repeats"))}
        if upload_id and self.ui.browse_limited and not filebrowser.within(Path(dest).expanduser(), filebrowser.browse_roots(self.ui.browse_folders)):
            # --listen: an upload lands only where the page's file browser reaches (home, --browse-root folders)
            return {n["prep_message"]: self.t("prepare.upload_outside", label=self.t("prepare.dest"))}
        if upload_id:  # received and unpacked by the upload route (gui/upload_route.py, docs/remote.md)
            uploaded = upload_route.uploaded_dataset(self.ui.jobs.state_dir, upload_id)
            if uploaded is None:
                return {n["prep_message"]: self.t.error(UserError(Msg.of("upload.route.gone")))}
            src = str(uploaded)
        try:
            r = prepare_project(src, dest, name, repeats, reg)
        except (UserError, OSError) as exc:  # the upload stays: a fixed project folder or name can use it
            return {n["prep_message"]: self.t.error(exc)}
        if upload_id:  # prepare copied what it kept; the unpacked upload is never left behind
            upload_route.discard(self.ui.jobs.state_dir, upload_id)
        f = self.ui.fields
        out = {
            f["folders.train_data_dir"]: str(r.project / "image"),
            f["folders.output_dir"]: str(r.project / "model"),
            f["folders.logging_dir"]: str(r.project / "log"),
            n["prep_message"]: self.t("prepare.done", folder=str(r.train.path), images=r.train.images, captions=r.train.captions, repeats=r.train.repeats),
        }
        left_out = [item for folder in (r.train, r.reg) if folder for item in folder.left_out]
        if left_out:  # name what was not copied and why (a GIF, a stray caption, a sub-folder)
            lines = [f"- `{path.name.replace('`', '')}`: {md(self.t.message(why))}" for path, why in left_out[:30]]
            if len(left_out) > 30:
                lines.append(f"- … (+{len(left_out) - 30})")
            out[n["prep_message"]] += "\n\n" + self.t("prepare.left_out", count=len(left_out)) + "\n" + "\n".join(lines)
        if r.reg:
            out[f["folders.reg_data_dir"]] = str(r.project / "reg")
        if upload_id:
            out[n["prep_upload"]] = ""  # used: the uploader is empty again
        return out

    # -- the check -------------------------------------------------------------------------------------------

    def check(self, data: dict) -> dict:
        from loratrainer.data.check import check_dataset

        n = self.ui.named
        try:
            config = self.ui.read_config(data)
            report = check_dataset(config)
        except (UserError, OSError) as exc:
            return {n["check_summary"]: self.t.error(exc), n["report"]: None}
        return {
            n["report"]: report,
            n["check_summary"]: self.summary(report),
            n["problems"]: [[self.t(f"check.severity.{p.severity}"), self.t.label_or_path(str(p.path)), self.t.problem(p)]
                            for p in report.sorted_problems()],
            n["problem_images"]: self.problem_thumbnails(report),
            n["concepts"]: concept_rows(report),
            n["steps"]: self.steps_text(report, report.steps),
            n["buckets"]: [[f"{w}x{h}", f"{w / h:.2f}", count] for (w, h), count in report.buckets.items()],
            n["rename_panel"]: _hidden(),
        }

    def summary(self, report) -> str:
        errors = sum(1 for p in report.problems if p.severity == "error")
        warnings = sum(1 for p in report.problems if p.severity == "warning")
        head = self.t("check.ready") if report.ok else self.t("check.refused", errors=errors)
        if report.ok and report.skipped:  # not "Ready to train" when images are left out (issue 22): how many, and why
            usable = report.images + report.reg_images
            head = self.t("check.ready_skipped", usable=usable, total=usable + len(report.skipped), skipped=len(report.skipped))
            head += "\n\n" + "\n".join(f"- {self.t(f'check.skip_reason.{kind}', count=count)}" for kind, count in skip_reasons(report).items())
        return head + "\n\n" + self.t(
            "check.counts", images=report.images, reg=report.reg_images, skipped=len(report.skipped), uncaptioned=len(report.uncaptioned), warnings=warnings
        )

    def problem_thumbnails(self, report) -> list[tuple[str, str]]:
        out = []
        for p in report.sorted_problems():
            if p.severity == "info" or not Path(p.path).is_file():
                continue
            thumb = self.ui.display.thumbnail(p.path)
            if thumb:
                out.append((thumb, f"{Path(p.path).name}: {self.t.problem(p)}"))
            if len(out) >= MAX_PROBLEM_THUMBS:
                break
        return out

    def steps_text(self, report, steps) -> str:
        """images x repeats x epochs / batch = steps, spelled out per concept folder."""
        if report is None:
            return self.t("steps.no_check")
        lines = [self.t("steps.concept", folder=row[0], images=row[2], repeats=row[1], samples=row[3]) for row in concept_rows(report)]
        s = steps
        lines.append(self.t("steps.per_epoch", samples=s.samples_per_epoch, batch=s.batch_size, batches=s.batches_per_epoch, steps=s.steps_per_epoch))
        if s.reg_samples_per_epoch:
            lines.append(self.t("steps.reg", reg=s.reg_samples_per_epoch))
        if getattr(report, "validation", None):  # validation_split / validation folder (data/validation.py)
            lines.append(self.t("steps.validation", n=len(report.validation)))
        lines.append(self.t("steps.total", steps_per_epoch=s.steps_per_epoch, epochs=s.epochs, total=s.total_steps))
        return "\n".join(f"- {line}" for line in lines[:-1]) + "\n\n" + lines[-1]

    def live_steps(self, data: dict) -> str:
        """Recount steps from the last check's samples when batch size, epochs, ... change (no disk access)."""
        from loratrainer.data.steps import recount_steps

        report = data.get(self.ui.named["report"])
        if report is None:
            return self.t("steps.no_check")
        try:
            steps = recount_steps(report, self.ui.paths_of(data))
        except ValueError:
            return self.t("steps.invalid")
        return self.steps_text(report, steps)

    # -- repeats --------------------------------------------------------------------------------------------

    def propose_renames(self, rows, train_dir: str) -> dict:
        n = self.ui.named
        try:
            plan = rename_plan(rows, train_dir)
        except UserError as exc:
            return {n["rename_text"]: self.t.error(exc), n["rename_panel"]: _shown(), n["rename_buttons"]: _hidden(), n["pending"]: []}
        if not plan:
            return {n["rename_text"]: self.t("repeats.unchanged"), n["rename_panel"]: _shown(), n["rename_buttons"]: _hidden(), n["pending"]: []}
        listing = "\n".join(f"- `{Path(a).name}` → `{Path(b).name}`" for a, b in plan)
        return {n["rename_text"]: self.t("repeats.confirm", listing=listing), n["rename_panel"]: _shown(), n["rename_buttons"]: _shown(),
                n["pending"]: plan}

    def apply_renames(self, data: dict) -> dict:
        n = self.ui.named
        plan = data.get(n["pending"]) or []
        if plan and self.ui.jobs.active() is not None:  # the running trainer reads these folders
            return {n["rename_text"]: self.t("repeats.running"), n["pending"]: [], n["rename_buttons"]: _hidden()}
        done = []
        for old, new in plan:
            if Path(new).exists():
                return {n["rename_text"]: self.t("repeats.exists", folder=new), n["pending"]: [], n["rename_buttons"]: _hidden()}
            Path(old).rename(new)
            done.append(new)
        result = self.check(data)
        result[n["rename_text"]] = self.t("repeats.done", count=len(done))
        result[n["pending"]] = []
        result[n["rename_panel"]] = _shown()
        result[n["rename_buttons"]] = _hidden()  # done: nothing left to confirm or cancel
        return result


def parse_repeats(value) -> int | None:
    """The Repeats box: empty means "suggested" (None); a whole number of at least 1; anything else 0 (refused).
    A text box, not a Number: Gradio's Number shows 0 when empty and refuses it against its minimum with a
    bare "Error" badge on every output."""
    text = str(value if value is not None else "").strip()
    if not text:
        return None
    try:
        number = float(text.replace(",", "."))
    except ValueError:
        return 0
    return int(number) if number.is_integer() and number >= 1 else 0


SKIP_KINDS = {"check.skipped": "unreadable", "check.too_small_skipped": "too_small", "check.resolution_too_small_for_image": "no_bucket"}


def skip_reasons(report) -> dict[str, int]:
    """{why: how many} of the skipped images, from the problem that skipped each (data/check.py's codes)."""
    skipped = {str(p) for p in report.skipped}
    counts: dict[str, int] = {}
    for p in report.problems:
        kind = SKIP_KINDS.get(p.code)
        if kind and str(p.path) in skipped:
            counts[kind] = counts.get(kind, 0) + 1
    if sum(counts.values()) < len(skipped):
        counts["other"] = len(skipped) - sum(counts.values())
    return counts


def concept_rows(report) -> list[list]:
    """[folder name, repeats, images, samples per epoch] per training and reg concept folder."""
    rows: dict[Path, list] = {}
    for s in report.samples:
        row = rows.setdefault(s.concept_dir, [s.concept_dir.name, s.repeats, 0, 0])
        row[2] += 1
        row[3] += s.repeats
    return list(rows.values())


def rename_plan(rows, train_dir: str) -> list[tuple[str, str]]:
    """[(old folder, new folder)] for concept folders whose repeats were edited; names keep their `_name` part."""
    plan = []
    root = Path(train_dir)
    for row in rows or []:
        name, repeats = str(row[0]), row[1]
        parsed = parse_concept_name(name)
        if parsed is None or not (root / name).is_dir():
            continue  # a regularisation folder or a row the user typed: only existing training folders are renamed
        try:
            new_repeats = int(float(repeats))
        except (TypeError, ValueError):
            raise UserError(Msg.of("dataset.repeats_not_whole", name=name)) from None
        if new_repeats < 1:
            raise UserError(Msg.of("dataset.repeats_below_one", name=name))
        if new_repeats != parsed[0]:
            plan.append((str(root / name), str(root / f"{new_repeats}_{parsed[1]}")))
    return plan


def _shown():
    import gradio as gr

    return gr.update(visible=True)


def _hidden():
    import gradio as gr

    return gr.update(visible=False)


def build(ui: UiContext) -> DatasetHandlers:
    import gradio as gr

    t, n, h = ui.t, ui.named, DatasetHandlers(ui)
    gr.Markdown(t("dataset.intro"))
    prepare = _prepare_panel(ui, gr)
    _folders(ui, h, gr)
    check = gr.Button(t("check.button"), variant="primary", elem_id="check-button")
    buttons = _report_panel(ui, gr)

    check_outputs = [n[k] for k in ("report", "check_summary", "problems", "problem_images", "concepts", "steps", "buckets", "rename_panel")]
    prep_inputs = {n[k] for k in ("prep_src", "prep_dest", "prep_name", "prep_repeats", "prep_reg", "prep_upload")}
    folder_outputs = [ui.fields[p] for p in FOLDERS] + [n["prep_message"], n["prep_upload"]]

    def wire() -> None:  # after every tab is built: the check reads all settings, the steps follow the Training tab
        cfg = ui.config_inputs()
        prepare.click(h.prepare, inputs=prep_inputs, outputs=folder_outputs, api_name="prepare_folders").then(
            h.check, inputs=cfg, outputs=check_outputs, api_visibility="private")
        check.click(h.check, inputs=cfg, outputs=check_outputs, api_name="check_dataset")
        # Choosing (or typing) an image folder runs the check by itself: the step calculator needs it.
        image_folders = [ui.fields["folders.train_data_dir"], ui.fields["folders.reg_data_dir"]]
        # The bucket settings decide which images are too small and how the steps come out: the check follows them,
        # so the counts on both tabs are never stale.
        from loratrainer.gui.form import specs_by_path

        bucket_fields = [ui.fields[p] for p, spec in specs_by_path().items() if spec.group == "buckets"]
        gr.on([c.change for c in image_folders + bucket_fields], h.check, inputs=cfg, outputs=check_outputs, trigger_mode="always_last",
              show_progress="hidden", api_visibility="private")
        from loratrainer.data.steps import STEP_SETTINGS

        live = [ui.fields[p] for p in STEP_SETTINGS]
        gr.on([c.change for c in live], h.live_steps, inputs=set(live) | {n["report"], ui.fields["folders.dataset_config"]}, outputs=[n["steps"]],
              show_progress="hidden", trigger_mode="always_last", api_visibility="private")
        buttons["apply"].click(h.propose_renames, inputs=[n["concepts"], ui.fields["folders.train_data_dir"]],
                               outputs=[n["rename_text"], n["rename_panel"], n["rename_buttons"], n["pending"]], api_visibility="private")
        buttons["confirm"].click(h.apply_renames, inputs=cfg | {n["pending"]}, outputs=check_outputs + [n["rename_text"], n["pending"], n["rename_buttons"]],
                                 api_visibility="private")
        buttons["cancel"].click(lambda: ([], _hidden()), outputs=[n["pending"], n["rename_panel"]], api_visibility="private")

    ui.after_build(wire)
    return h


def _prepare_panel(ui: UiContext, gr):
    t, n = ui.t, ui.named
    with gr.Accordion(t("prepare.section"), open=False, elem_id="prepare"):
        gr.Markdown(t("prepare.intro"))
        with gr.Row():
            n["prep_src"] = gr.Textbox(label=t("prepare.src"), info=t("prepare.src_help"), elem_id="prep-src")
            n["prep_dest"] = gr.Textbox(label=t("prepare.dest"), info=t("prepare.dest_help"), elem_id="prep-dest")
        # Pictures from the user's own computer when the server is another machine (docs/remote.md): sent to the
        # upload route (gui/upload_route.py, its own limits), whose answer, an upload id, is this component's value
        n["prep_upload"] = uploader(t, gr)
        gr.Markdown(t("prepare.upload_help"), elem_id="prep-upload-help")
        with gr.Row():
            n["prep_name"] = gr.Textbox(label=t("prepare.name"), info=t("prepare.name_help"), elem_id="prep-name")
            n["prep_repeats"] = gr.Textbox(value="", label=t("prepare.repeats"), info=t("prepare.repeats_help"), placeholder=t("prepare.repeats_placeholder"),
                                           elem_id="prep-repeats")
            n["prep_reg"] = gr.Textbox(label=t("prepare.reg"), info=t("prepare.reg_help"), elem_id="prep-reg")
        button = gr.Button(t("prepare.button"), variant="primary", elem_id="prep-button")
        n["prep_message"] = gr.Markdown(elem_id="prep-message")
    return button


def _folders(ui: UiContext, h: DatasetHandlers, gr) -> None:
    """The four folder fields, two per row, each with its as-you-type check and a Browse… panel."""
    pairs = list(FOLDERS.items())
    for i in range(0, len(pairs), 2):
        with gr.Row(equal_height=False):
            for path, role in pairs[i : i + 2]:
                with gr.Column():
                    box = ui.field(path)
                    note = gr.Markdown(elem_id=f"check-{role}", elem_classes=["lt-path-check"])
                    box.change(lambda p, r=role: h.check_folder(p, r), inputs=[box], outputs=[note], trigger_mode="always_last",
                               show_progress="hidden", api_visibility="private")
                    ui.on_load(lambda p, r=role: h.check_folder(p, r), inputs=[box], outputs=[note])


def _report_panel(ui: UiContext, gr) -> dict:
    t, n = ui.t, ui.named
    n["check_summary"] = gr.Markdown(elem_id="check-summary")
    n["report"] = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            n["problems"] = gr.Dataframe(headers=[t("check.col_severity"), t("check.col_path"), t("check.col_message")], datatype=["str", "str", "str"],
                                         interactive=False, wrap=True, max_height=320, label=t("check.problems"), elem_id="check-problems",
                                         column_widths=["12%", "33%", "55%"])  # "what to do" is the column to read
        with gr.Column(scale=2):
            n["problem_images"] = gr.Gallery(label=t("check.problem_images"), columns=4, height=240, object_fit="contain", elem_id="check-problem-images")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with warnings.catch_warnings():  # Gradio 6 still reads (n, "fixed"); row_limits "is not yet implemented"
                warnings.simplefilter("ignore", DeprecationWarning)
                # fixed rows: one per concept folder found, no add-row bar (a row typed in names no folder)
                n["concepts"] = gr.Dataframe(headers=[t("repeats.col_folder"), t("repeats.col_repeats"), t("repeats.col_images"), t("repeats.col_samples")],
                                             datatype=["str", "number", "number", "number"], type="array", interactive=True, static_columns=[0, 2, 3],
                                             row_count=(1, "fixed"), label=t("repeats.label"), elem_id="concepts")
            apply = gr.Button(t("repeats.apply"), elem_id="repeats-apply")
            with gr.Group(visible=False, elem_id="rename-panel") as n["rename_panel"]:
                n["rename_text"] = gr.Markdown()
                with gr.Row() as n["rename_buttons"]:
                    confirm = gr.Button(t("repeats.confirm_button"), variant="stop", elem_id="repeats-confirm")
                    cancel = gr.Button(t("repeats.cancel"), elem_id="repeats-cancel")
            n["pending"] = gr.State([])
        with gr.Column(scale=2):
            n["steps"] = gr.Markdown(t("steps.no_check"), label=t("steps.label"), elem_id="steps")
            n["buckets"] = gr.Dataframe(headers=[t("buckets.col_bucket"), t("buckets.col_ratio"), t("buckets.col_samples")], datatype=["str", "str", "number"],
                                        interactive=False, label=t("buckets.label"), elem_id="buckets")
    return {"apply": apply, "confirm": confirm, "cancel": cancel}


_UPLOADER_HTML = """<div class="lt-upload">
<label class="lt-upload-label">{label}</label>
<input type="file" multiple accept="image/*,.txt,.caption,.zip,application/zip" class="lt-upload-input" />
<progress class="lt-upload-progress" max="100" value="0" hidden></progress>
<div class="lt-upload-status" aria-live="polite"></div>
</div>"""

# Sends the chosen files to the upload route in one multipart request (progress from the browser's own upload
# events), says each step in the page's language, and on success makes the route's upload id this component's
# value (Prepare folders reads it). The status is kept in `shown` and written again after Gradio re-renders.
_UPLOADER_JS = """
const T = __TEXTS__;
const url = '__ROUTE__?lang=' + T.lang;
let shown = {text: '', bad: false};
const say = (text, bad) => {
  shown = {text: text, bad: !!bad};
  const status = element.querySelector('.lt-upload-status');
  if (status) { status.textContent = text; status.classList.toggle('lt-bad', !!bad); status.classList.toggle('lt-ok', !bad && !!props.value); }
};
const mb = n => Math.max(1, Math.round(n / 1048576));
const fill = (template, values) => Object.keys(values).reduce((s, k) => s.split('{' + k + '}').join(values[k]), template);
fetch(url, {credentials: 'same-origin'}).then(r => r.ok ? r.json() : null).then(j => {
  if (j && !shown.text) say(fill(T.limits, j));
}).catch(() => {});
element.addEventListener('change', event => {
  const input = event.target;
  if (!input.matches || !input.matches('input.lt-upload-input') || !input.files.length) return;
  const form = new FormData();
  for (const f of input.files) form.append('files', f, f.name);
  const replaces = props.value || '';
  props.value = '';
  const xhr = new XMLHttpRequest();
  xhr.open('POST', url + (replaces ? '&replaces=' + encodeURIComponent(replaces) : ''));
  const bar = () => element.querySelector('.lt-upload-progress');
  bar().hidden = false; bar().value = 0;
  say(T.starting);
  xhr.upload.onprogress = e => {
    if (!e.lengthComputable) return;
    bar().value = 100 * e.loaded / e.total;
    say(e.loaded >= e.total ? T.unpacking : fill(T.progress, {done: mb(e.loaded), total: mb(e.total)}));
  };
  xhr.onload = () => {
    bar().hidden = true;
    input.value = '';
    let answer = {};
    try { answer = JSON.parse(xhr.responseText); } catch (e) {}
    if (xhr.status === 200 && answer.id) {
      props.value = answer.id;
      say(answer.message);
    } else {
      say(fill(T.refused, {reason: answer.detail || ('HTTP ' + xhr.status)}), true);
    }
  };
  xhr.onerror = () => { bar().hidden = true; say(T.failed, true); };
  xhr.send(form);
});
watch('value', () => { if (!props.value && shown.text && !shown.bad) say(''); else say(shown.text, shown.bad); });
"""


def uploader(t, gr):
    """The Dataset tab's upload box: a file input sending to gui/upload_route.py; its value is the upload id."""
    texts = {"lang": t.lang, **{k: t(f"prepare.upload_{k}") for k in ("limits", "starting", "progress", "unpacking", "refused", "failed")}}
    js = _UPLOADER_JS.replace("__TEXTS__", json.dumps(texts)).replace("__ROUTE__", upload_route.ROUTE)
    html = _UPLOADER_HTML.format(label=t("prepare.upload"))
    return gr.HTML(value="", html_template=html, js_on_load=js, elem_id="prep-upload", padding=True, container=True,
                   css_template=".lt-upload-status {margin-top: 6px;} .lt-upload progress {width: 100%;} .lt-upload-label {display: block; margin-bottom: 6px;}")
