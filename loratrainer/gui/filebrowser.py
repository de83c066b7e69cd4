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
from typing import TypeGuard

from loratrainer.data.folders import parse_concept_name
from loratrainer.data.images import is_image_name
from loratrainer.gui.i18n import Translator

MAX_ENTRIES = 500
UP = ".."
# In --listen mode (others on the network may use the page) browsing stays within the user's home folder and the
# folders given with --browse-root when the GUI was started: the server decides, never a value the request carries
# (a logged-in user who sent "/" as the output folder could list the whole disk; docs/reliability.md row 52). On
# loopback the page's user is this machine's user and may browse anywhere.


@dataclass(frozen=True)
class Listing:
    folder: str
    choices: list[tuple[str, str]]  # (label, full path)
    error: str = ""


def usable_path(path: str | None) -> TypeGuard[str]:
    """A path the file system can be asked about: no NUL, not over PATH_MAX (4096 bytes)."""
    return path is not None and bool(path) and "\0" not in path and len(path.encode("utf-8", "surrogatepass")) <= 4096


def start_folder(path: str | None) -> Path:
    """Where browsing begins: the typed path (or its nearest existing parent), else the home folder."""
    p = Path(path).expanduser() if usable_path(path) and path.strip() else Path.home()
    try:
        while not p.is_dir() and p != p.parent:
            p = p.parent
        return p if p.is_dir() else Path.home()
    except (OSError, ValueError):
        return Path.home()


def browse_roots(server_folders: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The home folder and the folders given when the server started (--browse-root), resolved."""
    roots = [Path.home()]
    for value in server_folders:
        if usable_path(value) and value.strip():
            try:
                roots.append(Path(value.strip()).expanduser().resolve())
            except (OSError, ValueError, RuntimeError):
                continue
    return [r.resolve() for r in roots]


def within(folder: Path, roots: list[Path]) -> bool:
    try:
        real = folder.resolve()
    except (OSError, RuntimeError):
        return False
    return any(real == r or r in real.parents for r in roots)


def list_folder(folder: str | Path, files: bool, t: Translator, roots: list[Path] | None = None) -> Listing:
    """Sub-folders (and, with files=True, files) of `folder`, hidden entries left out, folders first. With `roots`
    (--listen mode), a folder outside them is not listed, and the page says why."""
    folder = Path(folder).expanduser()
    if roots is not None and not within(folder, roots):
        return Listing(str(folder), [(f"📁 {r}", str(r)) for r in roots], t("browse.outside_roots"))
    try:
        entries = sorted(os.scandir(folder), key=lambda e: (not e.is_dir(), e.name.lower()))
    except (OSError, ValueError) as exc:
        return Listing(str(folder), [], t("browse.cannot_read", error=getattr(exc, "strerror", None) or str(exc)))
    choices: list[tuple[str, str]] = []
    if folder.parent != folder and (roots is None or within(folder.parent, roots)):
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
    if not usable_path(path):
        return t("check.not_found")
    foreign = _foreign(path, role, t)
    if foreign:
        return foreign
    try:
        return _check_path(path, role, t)
    except (OSError, ValueError) as exc:  # a name too long for the file system, a loop of links
        return t("browse.cannot_read", error=getattr(exc, "strerror", None) or str(exc))


# The setting each path check's role is about, so a path from another computer is explained as Start explains it.
_ROLE_SETTINGS = {"model": "model.pretrained_model_name_or_path", "train": "folders.train_data_dir", "reg": "folders.reg_data_dir",
                  "output": "folders.output_dir", "log": "folders.logging_dir"}


def _foreign(path: str, role: str, t: Translator) -> str:
    """Start's sentence for a Windows path on Linux (or the reverse), not "Not found" (issue 22); "" otherwise."""
    from loratrainer.config.foreign_paths import foreign_kind
    from loratrainer.launch import path_checks  # noqa: F401  (defines launch.foreign_path, Start's sentence)
    from loratrainer.messages import Label, Msg

    kind = foreign_kind(path)
    if not kind or role not in _ROLE_SETTINGS:
        return ""
    return "✗ " + t.message(Msg.of("launch.foreign_path", setting=Label(_ROLE_SETTINGS[role]), kind=kind, value=path.strip()))


def _check_path(path: str, role: str, t: Translator) -> str:
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


def path_box(ui, make, *, files: bool = False, key: str):
    """A path box made by `make()` with a "Browse…" button beside it (level with the box's input, not its label)
    and, under both, the browser panel the button opens and closes. Returns (box, the row holding box and button)."""
    import gradio as gr

    with gr.Row(equal_height=False, elem_classes=["lt-path-row"]) as row:
        target = make()
        button = gr.Button(ui.t("browse.open"), scale=0, min_width=120, elem_id=f"browse-{key}", elem_classes=["lt-browse"])
    build(ui, target, files=files, key=key, button=button)
    return target, row


def build(ui, target, *, files: bool = False, key: str, button=None):
    """The browser panel that fills `target` (a path Textbox), opened and closed by `button` (made here, under
    `target`, when not given)."""
    import gradio as gr

    t = ui.t
    if button is None:
        button = gr.Button(t("browse.open"), elem_id=f"browse-{key}", elem_classes=["lt-browse"])
    is_open = gr.State(False)
    with gr.Group(visible=False, elem_id=f"browse-{key}-panel") as panel:
        with gr.Row(equal_height=False, elem_classes=["lt-path-row"]):
            folder = gr.Textbox(label=t("browse.folder"), elem_id=f"browse-{key}-folder")
            use = gr.Button(t("browse.use_folder"), scale=0, min_width=150, elem_id=f"browse-{key}-use", elem_classes=["lt-browse"])
        entries = gr.Dropdown(label=t("browse.entries_files" if files else "browse.entries"), choices=[], elem_id=f"browse-{key}-entries")
        error = gr.Markdown()

    def roots_of() -> list[Path] | None:
        return browse_roots(ui.browse_folders) if ui.browse_limited else None  # the server's, never the request's

    def show(path: str) -> dict:
        roots = roots_of()
        start = start_folder(path)
        if roots is not None and not within(start, roots):
            start = roots[0]  # begin at home rather than at a refusal
        listing = list_folder(start, files, t, roots)
        return {folder: listing.folder, entries: gr.update(choices=listing.choices, value=None), error: listing.error}

    def toggle(opened: bool, path: str) -> dict:
        if opened:
            return {panel: gr.update(visible=False), is_open: False, folder: gr.skip(), entries: gr.skip(), error: gr.skip()}
        return {**show(path), panel: gr.update(visible=True), is_open: True}

    def pick(chosen: str | None, current: str) -> dict:
        if not chosen or not usable_path(chosen):
            return {folder: gr.skip(), entries: gr.skip(), error: gr.skip(), target: gr.skip()}
        if Path(chosen).is_dir():
            return {**show(chosen), target: gr.skip()}
        roots = roots_of()
        if roots is not None and not within(Path(chosen), roots):
            return {folder: gr.skip(), entries: gr.skip(), error: t("browse.outside_roots"), target: gr.skip()}
        return {target: chosen, folder: gr.skip(), entries: gr.skip(), error: gr.skip()}

    def wire() -> None:  # after every tab is built
        entries.input(pick, inputs=[entries, folder], outputs=[folder, entries, error, target], api_visibility="private")
        folder.submit(show, inputs=[folder], outputs=[folder, entries, error], api_visibility="private")
        use.click(lambda f: f, inputs=[folder], outputs=[target], api_visibility="private")
        button.click(toggle, inputs=[is_open, target], outputs=[folder, entries, error, panel, is_open], api_visibility="private")

    ui.after_build(wire)
    return folder, entries
