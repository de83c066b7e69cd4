"""Imports point one way (docs/architecture.md): each part of the package may import only the parts listed for
it, and the GUI and the CLI, which start runs, never import the trainer: they use launch/ (torch-free), never
train/, and of model/ only its torch-free modules. Read from the source (module-level and function-level imports
alike), so a lazy import inside a function counts too; and checked once in a real process as well."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "loratrainer"

# A part is a folder (gui, train, ...) or a top-level module (events, errors, ...).
ALLOWED: dict[str, set[str]] = {
    "messages": set(),
    "files": set(),
    "compat": set(),
    "errors": {"messages"},
    "config": {"messages", "errors", "files"},
    # machine/: child processes on every OS (psutil) and whether the 8-bit optimizers can run here
    "machine": {"config", "messages", "errors"},
    # run/: the contract between launcher and trainer (run folder names, events, STOP, process records, outcomes);
    # both sides import it, it imports neither
    "run": {"machine", "messages", "errors", "files"},
    "data": {"config", "errors", "messages"},
    "model": {"config", "errors", "files", "messages"},
    "caption": {"data", "errors", "files", "messages", "compat"},
    # launch/: the GUI/CLI side of a run (start, follow, stop, queue, checks); it never imports train/
    "launch": {"config", "data", "model", "run", "machine", "errors", "files", "messages"},
    # train/: the trainer; it never imports launch/ (what the two share is in run/, config/ and machine/)
    "train": {"config", "data", "model", "run", "machine", "errors", "files", "messages", "compat"},
    "tools": {"config", "model", "errors", "files", "messages"},
    "compare": {"config", "run", "machine", "model", "train", "errors", "files", "messages"},
    "gui": {"config", "data", "caption", "run", "machine", "launch", "tools", "compare", "errors", "files", "messages"},
    # compat: the torchvision guard, which `loratrainer compare` needs before it imports diffusers
    "cli": {"config", "data", "caption", "run", "machine", "launch", "tools", "compare", "gui", "errors", "files", "messages", "compat"},
    "__main__": {"cli"},
    "i18n": set(),
    "assets": set(),
}
# Inside config/ each module imports only those before it here; the package's __init__ re-exports schema, fields
# and files, so `from loratrainer.config import X` is the schema's surface and the modules inside never use it.
CONFIG_ORDER = ["optimizer_table", "foreign_paths", "samplers", "sample_prompts", "schema", "fields", "files", "kohya_gui_keys", "kohya_report", "kohya_sdxl", "kohya", "presets"]
CONFIG_REEXPORTED = {"schema", "fields", "files"}
# The Kohya GUI import/export and presets: what the user loads from the GUI or the CLI, nothing else needs them.
CONFIG_FRONT = {"kohya", "kohya_gui_keys", "kohya_report", "kohya_sdxl", "presets"}
CONFIG_FRONT_USERS = {"config", "gui", "cli"}
# What of model/ the launcher and the GUI may use: error types and the model-family check from a file's header
# (launch.input_checks, tools.outputs); no torch at import.
MODEL_TORCH_FREE = {"errors", "families", "safetensors_header"}
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


def test_the_trainer_imports_nothing_from_the_launcher() -> None:
    """The trainer and the launcher share only the contract (run/), the settings (config/) and the machine helpers
    (machine/): train/ imports no module of launch/, lazily or not."""
    known = modules()
    wrong = [f"{name} imports {t}" for name, path in sorted(known.items()) if part(name) == "train"
             for t in sorted(imports(path, known)) if part(t) == "launch"]
    assert not wrong, "\n".join(wrong)


def test_the_settings_modules_import_one_way() -> None:
    """No circle inside config/: each module imports only the modules before it in CONFIG_ORDER, the package's
    __init__ only what it re-exports, and only the GUI and the CLI reach the Kohya import/export and presets."""
    known = modules()
    inside = {m.split(".")[-1] for m in known if m.startswith("loratrainer.config.")}
    assert inside == set(CONFIG_ORDER), f"a new module in config/: give it its place in CONFIG_ORDER ({sorted(inside ^ set(CONFIG_ORDER))})"
    wrong = []
    for i, name in enumerate(CONFIG_ORDER):
        for target in imports(known[f"loratrainer.config.{name}"], known):
            if part(target) == "config" and target.split(".")[-1] not in CONFIG_ORDER[:i]:
                wrong.append(f"config.{name} imports {target}")
    assert {m.split(".")[-1] for m in imports(known["loratrainer.config"], known)} == CONFIG_REEXPORTED
    for name, path in known.items():
        if part(name) not in CONFIG_FRONT_USERS:
            wrong += [f"{name} imports {t}" for t in imports(path, known) if part(t) == "config" and t.split(".")[-1] in CONFIG_FRONT]
    assert not wrong, "\n".join(wrong)


def test_gui_and_cli_never_import_the_trainer() -> None:
    known = modules()
    todo = [m for m in known if part(m) in ("gui", "cli", "launch") and m not in WORKER_COMMANDS]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [m for m in imports(known[module], known) if m not in seen]
    assert not seen & WORKER_COMMANDS, sorted(seen & WORKER_COMMANDS)
    packages = ("loratrainer.model", "loratrainer.tools", "loratrainer.compare")
    reached = {m for m in seen if part(m) in ("train", "model", "tools", "compare") and m not in packages}
    assert not {m for m in reached if part(m) == "train"}, sorted(reached)
    assert {m.split(".")[-1] for m in reached if part(m) == "model"} <= MODEL_TORCH_FREE, sorted(reached)
    assert {m.split(".")[-1] for m in reached if part(m) == "tools"} <= TOOLS_GUI_SIDE, sorted(reached)
    assert {m.split(".")[-1] for m in reached if part(m) == "compare"} <= COMPARE_GUI_SIDE, sorted(reached)


def test_the_launcher_side_does_not_import_torch_at_import_time() -> None:
    files = [(folder, p.stem) for folder in ("launch", "run", "machine") for p in (PACKAGE / folder).glob("*.py")]
    files += [("model", n) for n in MODEL_TORCH_FREE] + [("tools", n) for n in TOOLS_GUI_SIDE] + [("compare", n) for n in COMPARE_GUI_SIDE]
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


def test_the_gui_and_the_cli_process_loads_no_trainer_and_no_torch(tmp_path) -> None:
    """In a real process: build the GUI app, import every CLI command the GUI does not start as a subprocess and
    run `loratrainer train --print-command` up to its first check; no module of train/ and no torch, diffusers,
    transformers, peft or accelerate is loaded."""
    code = (
        "import importlib, pkgutil, sys\n"
        "from loratrainer.gui.server import ServeOptions, neutralise_gradio_env\n"
        "temp = neutralise_gradio_env()\n"
        "from loratrainer.gui.app import create_app\n"
        f"create_app(ServeOptions(open_browser=False, state_dir={str(tmp_path)!r}), temp_dir=temp)\n"
        "import loratrainer.cli as cli\n"
        f"workers = {sorted(WORKER_COMMANDS)!r}\n"
        "for m in pkgutil.iter_modules(cli.__path__, 'loratrainer.cli.'):\n"
        "    if m.name not in workers: importlib.import_module(m.name)\n"
        f"config = {str(tmp_path / 'c.json')!r}\n"
        "open(config, 'w').write('{}')\n"
        "assert cli.main(['train', '--config', config, '--print-command']) != 0\n"  # refused: no base model set
        "heavy = ('torch', 'diffusers', 'transformers', 'peft', 'accelerate')\n"
        "print(sorted(m for m in sys.modules if m.startswith('loratrainer.train') or m.split('.')[0] in heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_no_module_imports_itself_back() -> None:
    """No import circle anywhere in the package, through lazy imports too (a module reaching itself again by
    following imports): inside each part, imports point one way as they do between parts."""
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    circles = []
    for start in sorted(graph):
        todo, seen = list(graph[start]), set()
        while todo:
            m = todo.pop()
            if m == start:
                circles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo += graph[m]
    assert not circles, f"modules that import themselves back: {circles}"


def trainer_codes() -> dict[str, str]:
    """Every message code defined in a module the trainer can reach (train.entry and what it imports, lazily too),
    read from the source: any of them can end up in an event (a UserError raised in the trainer is the `ended`
    event's msg, a coded warning a `note`). code -> the module that defines it."""
    known = modules()
    todo, seen = ["loratrainer.train.entry"], set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imports(known[module], known)
    codes: dict[str, str] = {}
    for module in sorted(seen):
        for node in ast.walk(ast.parse(known[module].read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "define":
                (table,) = node.args
                assert isinstance(table, ast.Dict), f"{module}: define() with a table that is not a literal"
                for key in table.keys:
                    assert isinstance(key, ast.Constant) and isinstance(key.value, str), f"{module}: a code that is not a string"
                    codes[key.value] = module
    return codes


def test_every_code_the_trainer_can_put_in_an_event_is_known_where_runs_are_said_without_torch() -> None:
    """A run's `ended` msg or `note` is said by the page and by `loratrainer train`/`queue`, which never import torch:
    each code must be defined in a module they import (not in a torch module of model/ or train/), or they fall back
    to the trainer's English text. Checked in real processes: the page's run and queue views, the CLI's followers."""
    codes = trainer_codes()
    assert {"run.oom_at", "train.precision_off_cpu", "model.sdxl.not_sdxl", "check.no_usable_images"} <= set(codes)
    show = ("import json, sys\nfrom loratrainer.messages import ENGLISH\n"
            "heavy = ('torch', 'diffusers', 'transformers', 'peft', 'accelerate')\n"
            "print(json.dumps([sorted(ENGLISH), sorted(m for m in sys.modules if m.split('.')[0] in heavy)]))\n")
    # the page's modules that say a run (its status and notes, the Queue column): the app the GUI builds imports them,
    # so what they know the GUI process knows, whatever else it imported first
    gui = "import loratrainer.gui.run_view, loratrainer.gui.tab_queue\n"
    # what `loratrainer train` and `loratrainer queue list|run` import to say a run, and nothing of the GUI
    cli = "import loratrainer.launch.follow, loratrainer.launch.queue_runner, loratrainer.cli.queue\n"
    import json

    for who, code in (("the GUI", gui), ("the CLI", cli)):
        r = subprocess.run([sys.executable, "-c", code + show], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        registry, heavy = json.loads(r.stdout.strip().splitlines()[-1])
        assert heavy == [], (who, heavy)
        unknown = {code: module for code, module in codes.items() if code not in set(registry)}
        assert not unknown, f"{who} does not know these codes the trainer can send (define them torch-free, imported by launch/run_messages.py): {unknown}"


# -- Gradio behind one door ---------------------------------------------------------------------------------------

GRADIO_ADAPTER = PACKAGE / "gui" / "gradio_adapter.py"
# words of Gradio's page, front end and routes: a string of ours holding one relies on Gradio's internals
GRADIO_INTERNAL_TEXT = ("gradio_api", "navigator.", "auth_required", "sleep_when_free")


def gradio_methods() -> set[str]:
    """The methods of Gradio's Blocks and components (read from its source, without importing it): replacing one on
    an object or a class is a hook into Gradio."""
    import importlib.util

    root = Path(importlib.util.find_spec("gradio").origin).parent
    names: set[str] = set()
    for file, classes in ((root / "blocks.py", {"Block", "BlockContext", "Blocks"}),
                          (root / "components" / "base.py", {"Component", "FormComponent"})):
        for node in ast.parse(file.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name in classes:
                names |= {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return {n for n in names if not n.startswith("__")}


def gradio_private_uses(path: Path, methods: set[str]) -> list[str]:
    """Where a module touches Gradio's internals: a private or internal gradio module imported, a private name
    (`x._queue`, `getattr(x, "_queue")`) read in a module that works with Gradio objects, a Gradio method
    replaced (`blocks.call_function = ...`), or a string naming Gradio's page or route internals."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    uses_gradio = path.parent.name == "gui" or any(
        isinstance(n, (ast.Import, ast.ImportFrom)) and "gradio" in ast.unparse(n) for n in ast.walk(tree))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gradio":
            if node.module != "gradio" or any(a.name.startswith("_") for a in node.names):
                found.append(f"{where} imports {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name.startswith("gradio.")]
        elif isinstance(node, ast.Attribute) and uses_gradio and node.attr.startswith("_") and not node.attr.startswith("__") \
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{where} reads {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and uses_gradio and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_"):
            found.append(f"{where} {ast.unparse(node)}")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Attribute) and target.attr in methods and not (
                        isinstance(target.value, ast.Name) and target.value.id in ("self", "cls")):
                    found.append(f"{where} replaces {ast.unparse(target)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) and id(node) not in docstrings:
            text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
            found += [f"{where} names {word!r}" for word in GRADIO_INTERNAL_TEXT if word in text]
    return found


def test_nothing_but_the_adapter_touches_gradio_internals() -> None:
    """Every hook into Gradio's internals lives in gui/gradio_adapter.py, each tested against the installed Gradio
    (tests/test_gradio_adapter.py) and covered by the pin in pyproject.toml."""
    methods = gradio_methods()
    assert {"call_function", "preprocess", "process_api"} <= methods  # read from Gradio's source, as relied on
    found = [use for path in sorted(PACKAGE.rglob("*.py")) if path != GRADIO_ADAPTER for use in gradio_private_uses(path, methods)]
    assert not found, "Gradio internals outside gui/gradio_adapter.py:\n" + "\n".join(found)
    assert gradio_private_uses(GRADIO_ADAPTER, methods)  # the adapter itself is seen doing it: the check can see
