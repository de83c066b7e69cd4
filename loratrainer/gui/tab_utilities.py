"""Utilities tab, where the Kohya tutorial sends people ("Utilities > Captioning"): the captioning tools (BLIP,
GIT, WD14 tagger, one fixed text) and the caption editor (page through images, edit and save one caption,
find and replace in all captions, tag frequency). All the work is loratrainer.caption's; models load only
when a run starts."""

# No `from __future__ import annotations` here: Gradio finds gr.Request / gr.SelectData parameters by their
# evaluated annotations, and gradio is imported inside build() to keep the CLI light.
import threading
from typing import Any
from pathlib import Path

from loratrainer.errors import UserError
from loratrainer.gui import filebrowser
from loratrainer.gui.context import UiContext
from loratrainer.gui.form import number_box
from loratrainer.gui.i18n import md, sentence
from loratrainer.messages import Msg

PAGE_SIZE = 12
RUN_KEYS = ("cap_method", "cap_folder", "cap_extension", "cap_prefix", "cap_postfix", "cap_batch", "cap_overwrite", "cap_recursive",
            "cap_add_existing")


def option_key(method: str, name: str) -> str:
    """The UiContext name of a captioner option's component: `blip_top_p`, `wd14_model`, `fixed_text`."""
    return f"{method}_{name}"


def option_keys() -> list[str]:
    """Every captioner option on the page (the declared options with a label, caption/base.py)."""
    from loratrainer.caption.base import METHODS, option_specs

    return [option_key(m, s.name) for m, cls in METHODS.items() for s in option_specs(cls) if s.label]


class UtilitiesHandlers:
    def __init__(self, ui: UiContext):
        self.ui = ui
        self.t = ui.t
        self._cancel: dict[str, threading.Event] = {}  # session -> its running captioning's cancel flag

    # -- captioning -----------------------------------------------------------------------------------------

    def _options(self, v: dict):
        from loratrainer.caption import CaptionRunOptions
        from loratrainer.caption.base import METHODS, option_specs, options_from_values

        run = CaptionRunOptions(
            # the box's text: __post_init__ refuses an empty one (Path("") would be ".") and makes it a Path
            folder=(v["cap_folder"] or "").strip(),  # type: ignore[arg-type]
            caption_extension=v["cap_extension"] or ".txt", prefix=v["cap_prefix"] or "",
            postfix=v["cap_postfix"] or "", overwrite=bool(v["cap_overwrite"]), recursive=bool(v["cap_recursive"]), batch_size=int(v["cap_batch"] or 1),
        )
        method = v["cap_method"]
        cls = METHODS[method]
        shown = {s.name: v.get(option_key(method, s.name)) for s in option_specs(cls) if s.label}
        return run, options_from_values(cls, shown)

    def values(self, data: dict) -> dict:
        by_id = {id(c): k for k, c in self.ui.named.items()}
        return {by_id[id(c)]: v for c, v in data.items() if id(c) in by_id}

    def plan(self, data: dict) -> str:
        from loratrainer.caption import plan_captions

        v = self.values(data)
        try:
            run, _ = self._options(v)
            plan = plan_captions(run)
        except UserError as exc:
            return self.t.error(exc)
        text = self.t("caption.plan", todo=len(plan.images), existing=len(plan.existing))
        add_existing = bool(v.get("cap_add_existing")) and bool(run.prefix.strip() or run.postfix.strip())
        if not run.overwrite and plan.existing:
            text += " " + self.t("caption.plan_added" if add_existing else "caption.plan_kept")
        example = self._example(v, run, plan)
        if example:
            text += "\n\n" + self.t("caption.example", example=md(example))
        existing = self._existing_example(v, run, plan) if add_existing and not run.overwrite else ""
        if existing:  # beside the new one: what the option does to a caption the user wrote (issue 22)
            text += "\n\n" + self.t("caption.example_existing", example=md(existing))
        if plan.duplicates:
            pairs = "; ".join(" + ".join(p.name for p in group) for group in plan.duplicates[:5])
            text += "\n\n" + self.t("caption.duplicates", pairs=pairs)
        return text

    def _example(self, v: dict, run, plan) -> str:
        """One caption as it would be written for an image still to be captioned: the fixed text with prefix and
        postfix, or a model's with a placeholder for what it generates."""
        from loratrainer.caption import writer

        if not plan.images:
            return ""
        if v["cap_method"] == "fixed":
            middle = v.get(option_key("fixed", "text")) or ""
        else:
            middle = self.t("caption.generated")
        return f"{plan.images[0].name}: " + writer.compose(run.prefix, middle, run.postfix, self._separator(v))

    def _existing_example(self, v: dict, run, plan) -> str:
        """The first existing caption as "add to existing captions" will write it (its first line; unchanged when
        it already has the prefix/postfix)."""
        from loratrainer.caption import basic, writer

        if not plan.existing:
            return ""
        image, caption_file = next(iter(sorted(plan.existing.items())))
        try:
            old = writer.read_text(caption_file)
        except Exception:  # an unreadable caption: the run reports it
            return ""
        return f"{caption_file.name}: " + basic.prefix_postfix_edit(run.prefix, run.postfix, self._separator(v))(old).partition("\n")[0]

    def _separator(self, v: dict) -> str:
        """A tagger's tag separator (the prefix becomes the first tag), else a space (Kohya's add_pre_postfix)."""
        if v["cap_method"] == "wd14":
            return v.get(option_key("wd14", "tag_separator")) or ", "
        return " "

    def caption(self, data: dict, request=None):
        """A generator: progress lines while the captioner runs in a thread, then the report."""
        from loratrainer.caption import caption_folder

        v = self.values(data)
        try:
            run, model = self._options(v)
        except (UserError, ValueError, TypeError) as exc:
            yield self.t.error(exc)
            return
        add_existing = bool(v.get("cap_add_existing")) and bool(run.prefix.strip() or run.postfix.strip()) and not run.overwrite
        # The library's refusals (no folder, an empty fixed text, images sharing a caption file) come from the
        # thread below before anything is loaded or written, in the page's language.
        session = getattr(request, "session_hash", None) or "direct"
        cancel = self._cancel[session] = threading.Event()
        state: dict[str, Any] = {"done": 0, "total": None, "report": None, "error": None}

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
        if add_existing and report.skipped_existing and not report.cancelled:
            lines += self._add_to_existing(run, v)
        if report.cancelled:
            lines.append(self.t("caption.cancelled"))
        lines += [f"- `{s.path.name}`: {md(self.t.message(s.reason))}" for s in report.failed[:20]]
        yield "\n\n".join(lines)

    def _add_to_existing(self, run, v: dict) -> list[str]:
        """Kohya's add_pre_postfix on the captions that were kept: the prefix/postfix added where it is not
        there yet (never twice), the old files backed up first (caption/basic.py)."""
        from loratrainer.caption import basic

        try:
            edited = basic.add_prefix_postfix(run.folder, run.prefix, run.postfix, separator=self._separator(v),
                                              caption_extension=run.caption_extension, recursive=run.recursive)
        except (UserError, OSError) as exc:
            return [self.t.error(exc)]
        lines = [self.t("caption.added_existing", changed=len(edited.changed), unchanged=edited.unchanged)]
        if edited.backup_dir:
            lines.append(self.t("caption.backup", folder=str(edited.backup_dir)))
        lines += [f"- `{s.path.name}`: {md(self.t.message(s.reason))}" for s in edited.failed[:20]]
        return lines

    def caption_error(self, exc: Exception) -> str:
        from loratrainer.caption.folder import DuplicateStemsError

        if isinstance(exc, DuplicateStemsError):
            return self.t("caption.duplicates", pairs="; ".join(" + ".join(p.name for p in group) for group in exc.groups[:5]))
        msg = getattr(exc, "msg", None)
        if msg is not None and msg.code == "hub.offline":  # one sentence naming the page's box, not the CLI's --model
            text = self.t("caption.offline", model=msg.params.get("model", ""), why=self.t.message(msg.params.get("why", "")),
                          label=self.t("caption.model"))
            return self.t("error.generic", error=md(sentence(text, self.t.lang)))
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
        """The gallery of a page's (image, caption) items, one entry per item and in the same order: a thumbnail
        with the caption's start under it, or for an image that cannot be shown a grey tile with its name and why
        (issue 22: leaving it out shifted every later click onto the next image's caption file)."""
        return [self._gallery_entry(image, caption) for image, caption in items or []]

    def _gallery_entry(self, image: str, caption: str) -> tuple[str, str]:
        thumb = self.ui.display.thumbnail(Path(image))
        if thumb:
            return thumb, (caption or "")[:120] or self.t("editor.no_caption")
        return self.ui.display.placeholder(Path(image)), self.t("editor.unreadable", name=Path(image).name, reason=self._unreadable_reason(image))

    def _unreadable_reason(self, image: str) -> str:
        from loratrainer.data.images import ImageError, probe_image

        try:
            probe_image(image)
        except ImageError as exc:
            return self.t.message(exc.msg)
        except OSError:
            pass
        return self.t.message(Msg.of("image.not_image"))

    def editor_select(self, items: list, index: int, value=None) -> dict:
        """The clicked image, found by its FILE: the gallery entry's file is matched against each item's
        thumbnail (or placeholder), so a click can never land on another image's caption. `index` is used only
        when the entry's file is not given (the API)."""
        n = self.ui.named
        empty = {n["ed_image"]: "", n["ed_caption"]: "", n["ed_preview"]: None, n["ed_note"]: ""}
        items = list(items or [])
        chosen = None
        shown = _gallery_file(value)
        if shown:
            for image, caption in items:
                thumb = self.ui.display.thumbnail(Path(image)) or self.ui.display.placeholder(Path(image))
                if Path(thumb).name == shown:
                    chosen = (image, caption)
                    break
            if chosen is None:
                return empty
        elif index is not None and 0 <= index < len(items):
            chosen = items[index]
        if chosen is None:
            return empty
        image, caption = chosen
        preview = self.ui.display.thumbnail(image, 512)
        note = "" if preview else self.t("editor.unreadable", name=Path(image).name, reason=self._unreadable_reason(image))
        return {n["ed_image"]: image, n["ed_caption"]: caption, n["ed_preview"]: preview, n["ed_note"]: note}

    def editor_save(self, folder: str, image: str, caption: str, extension: str, items: list | None = None,
                    *, only_if_changed: bool = False) -> tuple:
        """Save one caption: (message, the page's items, their gallery), both showing the caption as saved.

        The Save button saves whatever is in the box; leaving the box (another image clicked, Tab) saves with
        `only_if_changed`, which writes nothing and returns (None, items, None) unless the image is on the page
        and its caption was changed."""
        from loratrainer.caption import editor, writer

        items = list(items or [])
        if only_if_changed:
            known = dict((str(i), c) for i, c in items)
            if not image or image not in known or (caption or "").strip() == (known[image] or "").strip():
                return None, items, None
        if not image:
            return self.t("editor.choose_image"), items, self.editor_gallery(items)
        try:
            path = editor.save_caption(Path(folder.strip()), Path(image), caption or "", caption_extension=extension or ".txt")
        except (UserError, OSError) as exc:
            return self.t.error(exc), items, self.editor_gallery(items)
        saved = writer.clean_text(caption or "")
        items = [(i, saved if i == image else c) for i, c in items]
        return self.t("editor.saved", path=path.name), items, self.editor_gallery(items)

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


def _gallery_file(value) -> str:
    """The file name of a gallery entry as Gradio's select event gives it ({"image": {"path", "url"}, ...});
    Gradio keeps the name when it copies the file into its cache."""
    if not isinstance(value, dict):
        return ""
    inner = value.get("image")
    image = inner if isinstance(inner, dict) else value
    for key in ("path", "url", "orig_name"):
        if isinstance(image.get(key), str) and image[key]:
            return Path(image[key].split("?")[0]).name
    return ""


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
    from loratrainer.caption.base import METHODS

    t, n = ui.t, ui.named
    gr.Markdown(t("caption.intro"))
    n["cap_method"] = gr.Radio([(t(f"caption.method.{m}"), m) for m in METHODS], value="blip", label=t("caption.method"), elem_id="cap-method")
    n["cap_folder"], _ = filebrowser.path_box(ui, lambda: gr.Textbox(label=t("caption.folder"), info=t("caption.folder_help"), elem_id="cap-folder"),
                                              key="caption")
    with gr.Row():
        n["cap_extension"] = gr.Textbox(".txt", label=t("caption.extension"), elem_id="cap-extension")
        n["cap_prefix"] = gr.Textbox(label=t("caption.prefix"), info=t("caption.prefix_help"), elem_id="cap-prefix")
        n["cap_postfix"] = gr.Textbox(label=t("caption.postfix"), elem_id="cap-postfix")
    with gr.Row():
        n["cap_batch"] = number_box(1, label=t("caption.batch"), precision=0, minimum=1)
        n["cap_overwrite"] = gr.Checkbox(False, label=t("caption.overwrite"), info=t("caption.overwrite_help"))
        n["cap_recursive"] = gr.Checkbox(False, label=t("caption.recursive"))
        n["cap_add_existing"] = gr.Checkbox(False, label=t("caption.add_existing"), info=t("caption.add_existing_help"), elem_id="cap-add-existing")
    panels = _captioner_options(ui, gr)
    with gr.Row():
        preview = gr.Button(t("caption.preview"), elem_id="cap-preview")
        run = gr.Button(t("caption.run"), variant="primary", elem_id="cap-run")
        cancel = gr.Button(t("caption.cancel"), variant="stop", interactive=False, elem_id="cap-cancel")  # pressable while it runs
    n["cap_message"] = gr.Markdown(elem_id="cap-message")

    n["cap_method"].change(lambda m: [gr.update(visible=k == m) for k in panels], inputs=[n["cap_method"]], outputs=list(panels.values()), api_visibility="private")
    inputs = {n[k] for k in (*RUN_KEYS, *option_keys())}

    def caption(data: dict, request: gr.Request):
        yield from h.caption(data, request)

    preview.click(h.plan, inputs=inputs, outputs=[n["cap_message"]], api_name="caption_plan")
    running, idle = (lambda: gr.update(interactive=True)), (lambda: gr.update(interactive=False))
    run.click(running, outputs=[cancel], api_visibility="private", show_progress="hidden").then(
        caption, inputs=inputs, outputs=[n["cap_message"]], api_name="caption_folder").then(
        idle, outputs=[cancel], api_visibility="private", show_progress="hidden")
    def cancel_run(request: gr.Request) -> str:
        return h.cancel(request)

    cancel.click(cancel_run, inputs=None, outputs=[n["cap_message"]], api_visibility="private")


def _captioner_options(ui: UiContext, gr) -> dict:
    """One panel of settings per captioner, generated from its declared options; only the chosen one is shown."""
    from loratrainer.caption.base import METHODS, option_specs

    t, n = ui.t, ui.named
    panels = {}
    for method, cls in METHODS.items():
        shown = [s for s in option_specs(cls) if s.label]
        with gr.Accordion(t(f"caption.method.{method}"), open=True, visible=method == "blip") as panels[method]:
            for i in range(0, len(shown), 3):
                with gr.Row():
                    for spec in shown[i : i + 3]:
                        n[option_key(method, spec.name)] = _option_component(gr, t, method, spec)
    return panels


def _option_component(gr, t, method: str, spec):
    common = dict(label=t(spec.label), elem_id=f"cap-{method}-{spec.name.replace('_', '-')}")
    if spec.info:
        common["info"] = t(spec.info)
    if spec.kind == "bool":
        return gr.Checkbox(spec.default, **common)
    if spec.kind in ("int", "float"):
        return number_box(spec.default, precision=0 if spec.kind == "int" else None, minimum=spec.minimum, maximum=spec.maximum, **common)
    if spec.kind == "tags":
        return gr.Textbox(", ".join(spec.default), **common)
    return gr.Textbox(spec.default, **common)


def _editor(ui: UiContext, h: UtilitiesHandlers, gr) -> None:
    t, n = ui.t, ui.named
    gr.Markdown(t("editor.intro"))
    with gr.Row(equal_height=False, elem_classes=["lt-path-row"]):  # Browse… level with the folder box's input
        n["ed_folder"] = gr.Textbox(label=t("editor.folder"), scale=4, elem_id="ed-folder")
        browse = gr.Button(t("browse.open"), scale=0, min_width=120, elem_id="browse-editor", elem_classes=["lt-browse"])
        n["ed_extension"] = gr.Textbox(".txt", label=t("caption.extension"), scale=1)
    filebrowser.build(ui, n["ed_folder"], key="editor", button=browse)
    with gr.Row():
        n["ed_query"] = gr.Textbox(label=t("editor.search"), scale=3)
        n["ed_page"] = number_box(1, label=t("editor.page_number"), precision=0, minimum=1, scale=1)
        load = gr.Button(t("editor.load"), scale=1, elem_id="ed-load")
    n["ed_message"] = gr.Markdown(elem_id="ed-message")
    n["ed_items"] = gr.State([])
    with gr.Row(equal_height=False):
        n["ed_gallery"] = gr.Gallery(label=t("editor.images"), columns=4, height="auto", allow_preview=False, elem_id="ed-gallery", scale=3)
        with gr.Column(scale=2):
            n["ed_preview"] = gr.Image(label=t("editor.preview"), interactive=False, height=260, type="filepath")
            n["ed_note"] = gr.Markdown(elem_id="ed-note")
            n["ed_image"] = gr.Textbox(label=t("editor.image"), interactive=False, elem_id="ed-image")
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
        return h.editor_select(items, evt.index, evt.value)

    n["ed_gallery"].select(select, inputs=[n["ed_items"]], outputs=[n["ed_image"], n["ed_caption"], n["ed_preview"], n["ed_note"]],
                           api_visibility="private")
    # Saving refreshes the page's items and gallery, so the caption under the thumbnail is the saved one.
    save.click(h.editor_save, inputs=[n["ed_folder"], n["ed_image"], n["ed_caption"], n["ed_extension"], n["ed_items"]],
               outputs=[n["ed_saved"], n["ed_items"], n["ed_gallery"]], api_name="caption_save")

    def autosave(folder: str, image: str, caption: str, extension: str, items: list):
        out = h.editor_save(folder, image, caption, extension, items, only_if_changed=True)
        return (gr.skip(), gr.skip(), gr.skip()) if out[0] is None else out

    n["ed_caption"].blur(autosave, inputs=[n["ed_folder"], n["ed_image"], n["ed_caption"], n["ed_extension"], n["ed_items"]],
                         outputs=[n["ed_saved"], n["ed_items"], n["ed_gallery"]], show_progress="hidden", api_visibility="private")
    do_replace.click(h.editor_replace, inputs=[n["ed_folder"], find, replace, n["ed_extension"]], outputs=[replaced], api_name="caption_replace")
    tags_button.click(h.editor_tags, inputs=[n["ed_folder"], n["ed_extension"]], outputs=[tags], api_name="caption_tags")
