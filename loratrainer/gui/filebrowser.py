"""The in-page file browser and the path check "as you type": folder choosing that works on a headless or
remote machine (no server-side tkinter dialog, docs/kohya-compat.md section 8 item 10).

The listing happens on the server (it is the server's disk the trainer reads); the page shows it in a
dropdown. Choosing a folder entry opens it, "Use this folder" copies the current folder into the target box,
choosing a file (file mode) copies the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loratrainer.data.folders import parse_concept_name
from loratrainer.data.images import is_image_name
from loratrainer.gui.i18n import Translator

MAX_ENTRIES = 500
UP = ".."


@dataclass(frozen=True)
class Listing:
    folder: str
    choices: list[tuple[str, str]]  # (label, full path)
    error: str = ""


def start_folder(path: str | None) -> Path:
    """Where browsing begins: the typed path (or its nearest existing parent), else the home folder."""
    p = Path(path).expanduser() if path and path.strip() else Path.home()
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p if p.is_dir() else Path.home()


def list_folder(folder: str | Path, files: bool, t: Translator) -> Listing:
    """Sub-folders (and, with files=True, files) of `folder`, hidden entries left out, folders first."""
    folder = Path(folder).expanduser()
    try:
        entries = sorted(os.scandir(folder), key=lambda e: (not e.is_dir(), e.name.lower()))
    except OSError as exc:
        return Listing(str(folder), [], t("browse.cannot_read", error=exc.strerror or str(exc)))
    choices: list[tuple[str, str]] = []
    if folder.parent != folder:
        choices.append((f"⬆ {UP}", str(folder.parent)))
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            choices.append((f"📁 {entry.name}", entry.path))
        elif files:
            choices.append((entry.name, entry.path))
        if len(choices) > MAX_ENTRIES:
            break
    return Listing(str(folder), choices)


def check_path(path: str, role: str, t: Translator) -> str:
    """One line under a path box: ✓ what it holds, or ✗ what is wrong with it and what to do."""
    if not path or not path.strip():
        return t(f"check.{role}.empty") if role in ("train", "output", "model") else ""
    p = Path(path.strip()).expanduser()
    if role == "model":
        if p.is_dir():
            ok = (p / "model_index.json").exists() or (p / "unet").is_dir()
            return t("check.model.diffusers") if ok else t("check.model.not_diffusers")
        if p.is_file():
            return t("check.model.file") if p.suffix.lower() in (".safetensors", ".ckpt") else t("check.model.bad_file")
        return t("check.model.hub") if "/" in path and not path.startswith(("/", ".", "~")) and path.count("/") == 1 else t("check.not_found")
    if not p.exists():
        return t("check.output.will_create") if role in ("output", "log") else t("check.not_found")
    if not p.is_dir():
        return t("check.not_a_folder")
    if role in ("train", "reg"):
        return _check_image_root(p, t)
    writable = os.access(p, os.W_OK)
    return t("check.output.ok") if writable else t("check.output.read_only")


def _check_image_root(root: Path, t: Translator) -> str:
    concepts, images, loose, ignored = 0, 0, 0, []
    try:
        for entry in os.scandir(root):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                parsed = parse_concept_name(entry.name)
                if parsed is None or parsed[0] < 1:
                    ignored.append(entry.name)
                    continue
                concepts += 1
                images += sum(1 for e in os.scandir(entry.path) if e.is_file() and is_image_name(e.name))
            elif is_image_name(entry.name):
                loose += 1
    except OSError as exc:
        return t("browse.cannot_read", error=exc.strerror or str(exc))
    if loose and not concepts:
        return t("check.train.concept_folder_itself")
    if not concepts:
        return t("check.train.no_concepts")
    text = t("check.train.ok", concepts=concepts, images=images)
    if ignored:
        text += " " + t("check.train.ignored", names=", ".join(ignored[:5]))
    return text


def build(ui, target, *, files: bool = False, key: str):
    """A collapsed "Browse…" panel that fills `target` (a path Textbox)."""
    import gradio as gr

    t = ui.t
    with gr.Accordion(t("browse.open"), open=False, elem_id=f"browse-{key}") as panel:
        with gr.Row():
            folder = gr.Textbox(label=t("browse.folder"), scale=4, elem_id=f"browse-{key}-folder")
            use = gr.Button(t("browse.use_folder"), scale=1, elem_id=f"browse-{key}-use")
        entries = gr.Dropdown(label=t("browse.entries_files" if files else "browse.entries"), choices=[], elem_id=f"browse-{key}-entries")
        error = gr.Markdown()

    def show(path: str) -> dict:
        listing = list_folder(start_folder(path), files, t)
        return {folder: listing.folder, entries: gr.update(choices=listing.choices, value=None), error: listing.error}

    def pick(chosen: str | None, current: str) -> dict:
        if not chosen:
            return {folder: gr.skip(), entries: gr.skip(), error: gr.skip(), target: gr.skip()}
        if Path(chosen).is_dir():
            return {**show(chosen), target: gr.skip()}
        return {target: chosen, folder: gr.skip(), entries: gr.skip(), error: gr.skip()}

    entries.input(pick, inputs=[entries, folder], outputs=[folder, entries, error, target], api_visibility="private")
    folder.submit(show, inputs=[folder], outputs=[folder, entries, error], api_visibility="private")
    use.click(lambda f: f, inputs=[folder], outputs=[target], api_visibility="private")
    panel.expand(show, inputs=[target], outputs=[folder, entries, error], api_visibility="private")
    return folder, entries
