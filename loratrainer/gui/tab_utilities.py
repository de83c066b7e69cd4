"""Utilities tab, where the Kohya tutorial sends people ("Utilities > Captioning"): the captioning tools (BLIP,
GIT, WD14 tagger, one fixed text) and the caption editor (page through images, edit and save one caption,
find and replace in all captions, tag frequency). All the work is loratrainer.caption's; models load only
when a run starts."""

# No `from __future__ import annotations` here: Gradio finds gr.Request / gr.SelectData parameters by their
# evaluated annotations, and gradio is imported inside build() to keep the CLI light.
import threading
from pathlib import Path

from loratrainer.errors import UserError
from loratrainer.gui import filebrowser
from loratrainer.gui.context import UiContext
from loratrainer.gui.i18n import md

METHODS = ("blip", "git", "wd14", "fixed")
PAGE_SIZE = 12


class UtilitiesHandlers:
    def __init__(self, ui: UiContext):
        self.ui = ui
        self.t = ui.t
        self._cancel: dict[str, threading.Event] = {}  # session -> its running captioning's cancel flag

    # -- captioning -----------------------------------------------------------------------------------------

    def _options(self, v: dict):
        from loratrainer.caption import BlipOptions, CaptionRunOptions, FixedTextOptions, GitOptions, TaggerOptions

        run = CaptionRunOptions(
            folder=Path((v["cap_folder"] or "").strip()), caption_extension=v["cap_extension"] or ".txt", prefix=v["cap_prefix"] or "",
            postfix=v["cap_postfix"] or "", overwrite=bool(v["cap_overwrite"]), recursive=bool(v["cap_recursive"]), batch_size=int(v["cap_batch"] or 1),
        )
        method = v["cap_method"]
        if method == "blip":
            model = BlipOptions(model=v["blip_model"] or BlipOptions.model, beam_search=bool(v["blip_beam"]), num_beams=int(v["blip_beams"] or 1),
                                top_p=float(v["blip_top_p"]), min_length=int(v["blip_min"]), max_length=int(v["blip_max"]))
        elif method == "git":
            model = GitOptions(model=v["git_model"] or GitOptions.model, max_length=int(v["git_max"]))
        elif method == "wd14":
            undesired = tuple(x.strip() for x in (v["wd_undesired"] or "").split(",") if x.strip())
            model = TaggerOptions(model=v["wd_model"] or TaggerOptions.model, general_threshold=float(v["wd_general"]),
                                  character_threshold=float(v["wd_character"]), undesired_tags=undesired)
        else:
            model = FixedTextOptions(text=v["fixed_text"] or "")
        return run, model

    def values(self, data: dict) -> dict:
        by_id = {id(c): k for k, c in self.ui.named.items()}
        return {by_id[id(c)]: v for c, v in data.items() if id(c) in by_id}

    def plan(self, data: dict) -> str:
        from loratrainer.caption import plan_captions

        v = self.values(data)
        if not (v["cap_folder"] or "").strip():
            return self.t("caption.folder_missing")
        try:
            run, _ = self._options(v)
            if not run.folder.is_dir():
                return self.t("check.not_found")
            plan = plan_captions(run)
        except UserError as exc:
            return self.t.error(exc)
        text = self.t("caption.plan", todo=len(plan.images), existing=len(plan.existing))
        if not run.overwrite and plan.existing:
            text += " " + self.t("caption.plan_kept")
        if plan.duplicates:
            pairs = "; ".join(" + ".join(p.name for p in group) for group in plan.duplicates[:5])
            text += "\n\n" + self.t("caption.duplicates", pairs=pairs)
        return text

    def caption(self, data: dict, request=None):
        """A generator: progress lines while the captioner runs in a thread, then the report."""
        from loratrainer.caption import caption_folder

        v = self.values(data)
        if not (v["cap_folder"] or "").strip():
            yield self.t("caption.folder_missing")
            return
        try:
            run, model = self._options(v)
        except (UserError, ValueError, TypeError) as exc:
            yield self.t.error(exc)
            return
        # What the GUI can see before the captioner runs, said in the page's language.
        if not run.folder.is_dir():
            yield self.t("check.not_found")
            return
        if v["cap_method"] == "fixed" and not (v["fixed_text"] or "").strip():
            yield self.t("caption.fixed_empty")
            return
        session = getattr(request, "session_hash", None) or "direct"
        cancel = self._cancel[session] = threading.Event()
        state = {"done": 0, "total": None, "report": None, "error": None}

        def work() -> None:
            try:
                state["report"] = caption_folder(run, model, progress=lambda d, n: state.update(done=d, total=n), cancel=cancel.is_set)
            except Exception as exc:  # UserError (offline model, duplicates) or anything else: shown, not raised
                state["error"] = self.caption_error(exc)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield self.t("caption.loading")
            while thread.is_alive():
                thread.join(0.5)
                if state["total"] is not None:
                    yield self.t("caption.progress", done=state["done"], total=state["total"])
        finally:
            if thread.is_alive():  # the page went away or the run was cancelled: stop after this batch
                cancel.set()
            self._cancel.pop(session, None)
        if state["error"]:
            yield state["error"]
            return
        report = state["report"]
        lines = [self.t("caption.done", written=len(report.written), kept=len(report.skipped_existing), failed=len(report.failed))]
        if report.backup_dir:
            lines.append(self.t("caption.backup", folder=str(report.backup_dir)))
        if report.cancelled:
            lines.append(self.t("caption.cancelled"))
        lines += [f"- `{s.path.name}`: {md(self.t.message(s.reason))}" for s in report.failed[:20]]
        yield "\n\n".join(lines)

    def caption_error(self, exc: Exception) -> str:
        from loratrainer.caption.folder import DuplicateStemsError

        if isinstance(exc, DuplicateStemsError):
            return self.t("caption.duplicates", pairs="; ".join(" + ".join(p.name for p in group) for group in exc.groups[:5]))
        return self.t.error(exc)

    def cancel(self, request=None) -> str:
        event = self._cancel.get(getattr(request, "session_hash", None) or "direct")
        if event is None:
            return self.t("caption.nothing_running")
        event.set()
        return self.t("caption.cancelling")

    # -- the caption editor -------------------------------------------------------------------------------------

    def editor_page(self, folder: str, query: str, page: int, extension: str) -> dict:
        from loratrainer.caption import editor

        n = self.ui.named
        if not (folder or "").strip() or not Path(folder.strip()).is_dir():
            return {n["ed_message"]: self.t("check.not_found"), n["ed_items"]: [], n["ed_gallery"]: []}
        try:
            result = editor.list_page(Path(folder.strip()), int(page or 1), PAGE_SIZE, caption_extension=extension or ".txt", query=query or "")
        except (UserError, OSError, ValueError) as exc:
            return {n["ed_message"]: self.t.error(exc), n["ed_items"]: [], n["ed_gallery"]: []}
        items = [(str(i.image), i.caption) for i in result.items]
        return {
            n["ed_items"]: items,
            n["ed_gallery"]: self.editor_gallery(items),
            n["ed_page"]: result.page,
            n["ed_message"]: self.t("editor.page", page=result.page, pages=result.pages, total=result.total),
        }

    def editor_gallery(self, items: list) -> list:
        """The gallery of a page's (image, caption) items: a thumbnail with the caption's start under it."""
        gallery = [(self.ui.display.thumbnail(Path(image)) or "", (caption or "")[:60] or self.t("editor.no_caption")) for image, caption in items or []]
        return [g for g in gallery if g[0]]

    def editor_select(self, items: list, index: int) -> dict:
        n = self.ui.named
        if not items or index is None or not 0 <= index < len(items):
            return {n["ed_image"]: "", n["ed_caption"]: "", n["ed_preview"]: None}
        image, caption = items[index]
        return {n["ed_image"]: image, n["ed_caption"]: caption, n["ed_preview"]: self.ui.display.thumbnail(image, 512)}

    def editor_save(self, folder: str, image: str, caption: str, extension: str) -> str:
        return self._save(folder, image, caption, extension)[0]

    def _save(self, folder: str, image: str, caption: str, extension: str) -> tuple[str, str | None]:
        """(message, the caption as saved); None when nothing was saved."""
        from loratrainer.caption import editor, writer

        if not image:
            return self.t("editor.choose_image"), None
        try:
            path = editor.save_caption(Path(folder.strip()), Path(image), caption or "", caption_extension=extension or ".txt")
        except (UserError, OSError) as exc:
            return self.t.error(exc), None
        return self.t("editor.saved", path=path.name), writer.clean_text(caption or "")

    def editor_save_and_refresh(self, folder: str, image: str, caption: str, extension: str, items: list) -> tuple:
        """The Save button: (message, items, gallery), the page's items and gallery showing the saved caption."""
        message, saved = self._save(folder, image, caption, extension)
        if saved is None:
            return message, items, self.editor_gallery(items)
        items = [(i, saved if i == image else c) for i, c in items or []]
        return message, items, self.editor_gallery(items)

    def editor_autosave(self, folder: str, image: str, caption: str, extension: str, items: list) -> tuple:
        """Saved as you go: when the caption box loses focus (another image clicked, Tab), a changed caption is
        saved. Returns (message, items with the new caption); (None, None) when nothing changed."""
        known = dict((str(i), c) for i, c in (items or []))
        if not image or image not in known or (caption or "").strip() == (known[image] or "").strip():
            return None, None
        message = self.editor_save(folder, image, caption, extension)
        return message, [(i, caption if i == image else c) for i, c in items]

    def editor_replace(self, folder: str, find: str, replace: str, extension: str) -> str:
        from loratrainer.caption import editor

        if not (folder or "").strip() or not Path(folder.strip()).is_dir():
            return self.t("check.not_found")
        if not find:
            return self.t("editor.find_empty")
        try:
            report = editor.search_replace(Path(folder.strip()), find or "", replace or "", caption_extension=extension or ".txt")
        except (UserError, OSError) as exc:
            return self.t.error(exc)
        text = self.t("editor.replaced", changed=len(report.changed), unchanged=report.unchanged)
        if report.backup_dir:
            text += " " + self.t("caption.backup", folder=str(report.backup_dir))
        return text

    def editor_tags(self, folder: str, extension: str) -> list[list]:
        from loratrainer.caption import editor

        try:
            return [[tag, count] for tag, count in editor.tag_frequency(Path(folder.strip()), caption_extension=extension or ".txt")[:200]]
        except (UserError, OSError):
            return []


def build(ui: UiContext) -> UtilitiesHandlers:
    import gradio as gr

    t, h = ui.t, UtilitiesHandlers(ui)
    with gr.Tabs():
        with gr.Tab(t("utilities.captioning"), id="captioning", elem_id="tab-captioning"):
            _captioning(ui, h, gr)
        with gr.Tab(t("utilities.editor"), id="caption-editor", elem_id="tab-caption-editor"):
            _editor(ui, h, gr)
        with gr.Tab(t("utilities.lora_tools"), id="lora-tools", elem_id="tab-lora-tools"):
            from loratrainer.gui import tab_lora_tools

            ui.handlers["lora_tools"] = tab_lora_tools.build(ui)
    return h


def _captioning(ui: UiContext, h: UtilitiesHandlers, gr) -> None:
    t, n = ui.t, ui.named
    gr.Markdown(t("caption.intro"))
    n["cap_method"] = gr.Radio([(t(f"caption.method.{m}"), m) for m in METHODS], value="blip", label=t("caption.method"), elem_id="cap-method")
    n["cap_folder"] = gr.Textbox(label=t("caption.folder"), info=t("caption.folder_help"), elem_id="cap-folder")
    filebrowser.build(ui, n["cap_folder"], key="caption")
    with gr.Row():
        n["cap_extension"] = gr.Textbox(".txt", label=t("caption.extension"), elem_id="cap-extension")
        n["cap_prefix"] = gr.Textbox(label=t("caption.prefix"), info=t("caption.prefix_help"), elem_id="cap-prefix")
        n["cap_postfix"] = gr.Textbox(label=t("caption.postfix"), elem_id="cap-postfix")
    with gr.Row():
        n["cap_batch"] = gr.Number(1, label=t("caption.batch"), precision=0, minimum=1)
        n["cap_overwrite"] = gr.Checkbox(False, label=t("caption.overwrite"), info=t("caption.overwrite_help"))
        n["cap_recursive"] = gr.Checkbox(False, label=t("caption.recursive"))
    panels = _captioner_options(ui, gr)
    with gr.Row():
        preview = gr.Button(t("caption.preview"), elem_id="cap-preview")
        run = gr.Button(t("caption.run"), variant="primary", elem_id="cap-run")
        cancel = gr.Button(t("caption.cancel"), variant="stop", elem_id="cap-cancel")
    n["cap_message"] = gr.Markdown(elem_id="cap-message")

    n["cap_method"].change(lambda m: [gr.update(visible=k == m) for k in panels], inputs=[n["cap_method"]], outputs=list(panels.values()), api_visibility="private")
    keys = ("cap_method", "cap_folder", "cap_extension", "cap_prefix", "cap_postfix", "cap_batch", "cap_overwrite", "cap_recursive", "blip_model", "blip_beam",
            "blip_beams", "blip_top_p", "blip_min", "blip_max", "git_model", "git_max", "wd_model", "wd_general", "wd_character", "wd_undesired", "fixed_text")
    inputs = {n[k] for k in keys}

    def caption(data: dict, request: gr.Request):
        yield from h.caption(data, request)

    preview.click(h.plan, inputs=inputs, outputs=[n["cap_message"]], api_name="caption_plan")
    run.click(caption, inputs=inputs, outputs=[n["cap_message"]], api_name="caption_folder")
    def cancel_run(request: gr.Request) -> str:
        return h.cancel(request)

    cancel.click(cancel_run, inputs=None, outputs=[n["cap_message"]], api_visibility="private")


def _captioner_options(ui: UiContext, gr) -> dict:
    """One panel of settings per captioner; only the chosen one is shown."""
    t, n = ui.t, ui.named
    with gr.Accordion(t("caption.method.blip"), open=True) as blip:
        with gr.Row():
            n["blip_model"] = gr.Textbox("Salesforce/blip-image-captioning-large", label=t("caption.model"), info=t("caption.model_help"))
            n["blip_beam"] = gr.Checkbox(True, label=t("caption.beam_search"))
            n["blip_beams"] = gr.Number(1, label=t("caption.num_beams"), precision=0, minimum=1)
        with gr.Row():
            n["blip_top_p"] = gr.Number(0.9, label=t("caption.top_p"), minimum=0, maximum=1)
            n["blip_min"] = gr.Number(5, label=t("caption.min_length"), precision=0, minimum=0)
            n["blip_max"] = gr.Number(75, label=t("caption.max_length"), precision=0, minimum=1)
    with gr.Accordion(t("caption.method.git"), open=True, visible=False) as git:
        with gr.Row():
            n["git_model"] = gr.Textbox("microsoft/git-large-textcaps", label=t("caption.model"), info=t("caption.model_help"))
            n["git_max"] = gr.Number(50, label=t("caption.max_length"), precision=0, minimum=1)
    with gr.Accordion(t("caption.method.wd14"), open=True, visible=False) as wd14:
        with gr.Row():
            n["wd_model"] = gr.Textbox("SmilingWolf/wd-v1-4-convnext-tagger-v2", label=t("caption.model"), info=t("caption.model_help"))
            n["wd_general"] = gr.Number(0.35, label=t("caption.general_threshold"), minimum=0, maximum=1)
            n["wd_character"] = gr.Number(0.85, label=t("caption.character_threshold"), minimum=0, maximum=1)
        n["wd_undesired"] = gr.Textbox(label=t("caption.undesired"))
    with gr.Accordion(t("caption.method.fixed"), open=True, visible=False) as fixed:
        n["fixed_text"] = gr.Textbox(label=t("caption.fixed_text"), elem_id="cap-fixed-text")
    return {"blip": blip, "git": git, "wd14": wd14, "fixed": fixed}


def _editor(ui: UiContext, h: UtilitiesHandlers, gr) -> None:
    t, n = ui.t, ui.named
    gr.Markdown(t("editor.intro"))
    with gr.Row():
        n["ed_folder"] = gr.Textbox(label=t("editor.folder"), scale=4, elem_id="ed-folder")
        n["ed_extension"] = gr.Textbox(".txt", label=t("caption.extension"), scale=1)
    filebrowser.build(ui, n["ed_folder"], key="editor")
    with gr.Row():
        n["ed_query"] = gr.Textbox(label=t("editor.search"), scale=3)
        n["ed_page"] = gr.Number(1, label=t("editor.page_number"), precision=0, minimum=1, scale=1)
        load = gr.Button(t("editor.load"), scale=1, elem_id="ed-load")
    n["ed_message"] = gr.Markdown(elem_id="ed-message")
    n["ed_items"] = gr.State([])
    with gr.Row(equal_height=False):
        n["ed_gallery"] = gr.Gallery(label=t("editor.images"), columns=4, height=420, allow_preview=False, elem_id="ed-gallery", scale=3)
        with gr.Column(scale=2):
            n["ed_preview"] = gr.Image(label=t("editor.preview"), interactive=False, height=260, type="filepath")
            n["ed_image"] = gr.Textbox(label=t("editor.image"), interactive=False)
            n["ed_caption"] = gr.Textbox(label=t("editor.caption"), lines=3, elem_id="ed-caption")
            save = gr.Button(t("editor.save"), variant="primary", elem_id="ed-save")
            n["ed_saved"] = gr.Markdown(elem_id="ed-saved")
    with gr.Accordion(t("editor.replace_section"), open=False):
        with gr.Row():
            find = gr.Textbox(label=t("editor.find"))
            replace = gr.Textbox(label=t("editor.replace"))
            do_replace = gr.Button(t("editor.replace_all"))
        replaced = gr.Markdown()
    with gr.Accordion(t("editor.tags_section"), open=False):
        tags_button = gr.Button(t("editor.count_tags"))
        tags = gr.Dataframe(headers=[t("editor.col_tag"), t("editor.col_count")], datatype=["str", "number"], interactive=False)

    page_inputs = [n["ed_folder"], n["ed_query"], n["ed_page"], n["ed_extension"]]
    page_outputs = [n["ed_items"], n["ed_gallery"], n["ed_page"], n["ed_message"]]
    load.click(h.editor_page, inputs=page_inputs, outputs=page_outputs, api_name="caption_page")

    def select(items: list, evt: gr.SelectData) -> dict:
        return h.editor_select(items, evt.index)

    n["ed_gallery"].select(select, inputs=[n["ed_items"]], outputs=[n["ed_image"], n["ed_caption"], n["ed_preview"]], api_visibility="private")
    # Saving refreshes the page's items and gallery, so the caption under the thumbnail is the saved one.
    save.click(h.editor_save_and_refresh, inputs=[n["ed_folder"], n["ed_image"], n["ed_caption"], n["ed_extension"], n["ed_items"]],
               outputs=[n["ed_saved"], n["ed_items"], n["ed_gallery"]], api_name="caption_save")

    def autosave(folder: str, image: str, caption: str, extension: str, items: list):
        message, new_items = h.editor_autosave(folder, image, caption, extension, items)
        return (gr.skip(), gr.skip(), gr.skip()) if message is None else (message, new_items, h.editor_gallery(new_items))

    n["ed_caption"].blur(autosave, inputs=[n["ed_folder"], n["ed_image"], n["ed_caption"], n["ed_extension"], n["ed_items"]],
                         outputs=[n["ed_saved"], n["ed_items"], n["ed_gallery"]], show_progress="hidden", api_visibility="private")
    do_replace.click(h.editor_replace, inputs=[n["ed_folder"], find, replace, n["ed_extension"]], outputs=[replaced], api_name="caption_replace")
    tags_button.click(h.editor_tags, inputs=[n["ed_folder"], n["ed_extension"]], outputs=[tags], api_name="caption_tags")
