"""Imports point one way (docs/architecture.md): each part of the package may import only the parts listed for
it, and the GUI and the CLI, which start runs, never import the trainer: only the launcher side of train/
(torch-free) and nothing of model/. Read from the source (module-level and function-level imports alike), so
a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "loratrainer"

# A part is a folder (gui, train, ...) or a top-level module (config, events, ...).
SETTINGS = {"config", "config_fields", "config_files", "kohya", "kohya_gui_keys", "presets"}
ALLOWED: dict[str, set[str]] = {
    "messages": set(),
    "files": set(),
    "compat": set(),
    "optimizer_table": set(),
    "foreign_paths": set(),
    "errors": {"messages"},
    "events": set(),
    # the settings modules import each other (config re-exports config_fields and config_files lazily)
    **{name: SETTINGS | {"messages", "errors", "files", "optimizer_table", "foreign_paths"} for name in SETTINGS},
    "data": {"config", "errors", "messages"},
    "model": {"config", "errors", "files", "messages"},
    "caption": {"data", "errors", "files", "messages", "compat"},
    "train": {"config", "data", "model", "events", "errors", "files", "messages", "compat", "optimizer_table", "foreign_paths"},
    "tools": {"config", "model", "errors", "files", "messages"},
    "compare": {"config", "events", "model", "train", "errors", "files", "messages"},
    "gui": {"config", "kohya", "presets", "data", "caption", "events", "train", "tools", "compare", "errors", "files", "messages"},
    # compat: the torchvision guard, which `loratrainer compare` needs before it imports diffusers
    "cli": {"config", "kohya", "presets", "data", "caption", "events", "train", "tools", "compare", "gui", "errors", "files", "messages", "compat"},
    "__main__": {"cli"},
    "i18n": set(),
    "assets": set(),
}
# What of train/ the GUI and the CLI may use: starting a run and following it (no torch at import).
LAUNCHER_SIDE = {
    "launch", "follow", "checkpoints", "eight_bit", "sample_prompts", "samplers", "path_checks", "input_checks",
    "processes", "run_queue", "queue_runner",
}
# What of model/ the launcher side and the GUI may use: error types and the model-family check from a file's
# header (train.input_checks, tools.outputs); no torch at import.
MODEL_TORCH_FREE = {"errors", "families"}
# What of tools/ the GUI may use before it starts a tool as `loratrainer lora ...` in a subprocess.
TOOLS_GUI_SIDE = {"outputs", "weighted", "messages"}
# What of compare/ the GUI may use: a run's files, the sample grid (Pillow) and starting a render in a subprocess.
COMPARE_GUI_SIDE = {"runs", "inputs", "canvas", "sample_grid", "process"}
# `loratrainer lora ...` does the tool's work (torch) in its own process: it is what the GUI starts, as it starts
# the trainer, so its imports are not followed here (the GUI itself never imports it).
WORKER_COMMANDS = {"loratrainer.cli.lora", "loratrainer.cli.compare"}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `path` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "loratrainer":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "loratrainer"}
    return {m for m in found if m in known and m != "loratrainer"}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_part_imports_only_what_it_may() -> None:
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        if name == "loratrainer":
            continue
        mine = part(name)
        assert mine in ALLOWED, f"{name}: a new part of the package; say in ALLOWED (and docs/architecture.md) what it may import"
        for target in sorted(imports(path, known)):
            theirs = part(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the direction in docs/architecture.md:\n" + "\n".join(wrong)


def test_gui_and_cli_never_import_the_trainer() -> None:
    known = modules()
    todo = [m for m in known if part(m) in ("gui", "cli") and m not in WORKER_COMMANDS]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [m for m in imports(known[module], known) if m not in seen]
    assert not seen & WORKER_COMMANDS, sorted(seen & WORKER_COMMANDS)
    packages = ("loratrainer.train", "loratrainer.model", "loratrainer.tools", "loratrainer.compare")
    reached = {m for m in seen if part(m) in ("train", "model", "tools", "compare") and m not in packages}
    assert {m.split(".")[-1] for m in reached if part(m) == "train"} <= LAUNCHER_SIDE, sorted(reached)
    assert {m.split(".")[-1] for m in reached if part(m) == "model"} <= MODEL_TORCH_FREE, sorted(reached)
    assert {m.split(".")[-1] for m in reached if part(m) == "tools"} <= TOOLS_GUI_SIDE, sorted(reached)
    assert {m.split(".")[-1] for m in reached if part(m) == "compare"} <= COMPARE_GUI_SIDE, sorted(reached)


def test_the_launcher_side_does_not_import_torch_at_import_time() -> None:
    files = [("train", n) for n in LAUNCHER_SIDE] + [("model", n) for n in MODEL_TORCH_FREE] + [("tools", n) for n in TOOLS_GUI_SIDE]
    files += [("compare", n) for n in COMPARE_GUI_SIDE]
    for folder, name in sorted(files):
        tree = ast.parse((PACKAGE / folder / f"{name}.py").read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        heavy = [ast.unparse(n) for n in top if any(x in ast.unparse(n) for x in ("torch", "diffusers", "transformers", "peft", "accelerate"))]
        assert not heavy, (name, heavy)


def test_no_module_of_the_captioners_is_imported_by_their_options() -> None:
    """caption/base.py (the options) is imported by blip, git and wd14; it must not import them back."""
    known = modules()
    assert not {m for m in imports(known["loratrainer.caption.base"], known) if m.split(".")[-1] in ("blip", "git", "wd14", "captioners")}
    assert "loratrainer.gui.app" not in imports(known["loratrainer.gui.server"], known)
