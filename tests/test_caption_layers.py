"""The captioning package depends only on data, files, errors and compat: never on train, model or gui."""

from __future__ import annotations

import ast
from pathlib import Path

import loratrainer

PACKAGE = Path(loratrainer.__file__).parent
FORBIDDEN = ("loratrainer.train", "loratrainer.model", "loratrainer.gui")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_caption_and_its_cli_do_not_import_train_model_or_gui():
    files = [*sorted((PACKAGE / "caption").glob("*.py")), PACKAGE / "cli" / "caption.py", PACKAGE / "compat.py"]
    bad = {f"{f.relative_to(PACKAGE)}: {name}" for f in files for name in _imports(f) if name.startswith(FORBIDDEN)}
    assert not bad


def test_compat_is_a_leaf():
    assert not {n for n in _imports(PACKAGE / "compat.py") if n.startswith("loratrainer")}
