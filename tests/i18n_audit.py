"""The translation audit (moved here from loratrainer/gui/i18n.py, which the page needs and this is not): which
modules define coded messages, their English templates, and the keys each language's table still lacks.
tests/test_gui_i18n.py and tests/test_gui_i18n_messages.py keep both tables complete with it;
`python -m tests.i18n_audit` lists what a language lacks (e.g. a new setting's Korean label)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import loratrainer
from loratrainer.gui.i18n import DEFAULT_LANGUAGE, LANGUAGES, table


def message_modules() -> list[str]:
    """The modules that define coded messages: every module of the package with a top-level `define({...})`
    (found by reading the sources, so a new module's messages are checked without a list to keep)."""
    root = Path(loratrainer.__file__).resolve().parent
    defines = re.compile(r"^define\(", re.MULTILINE)
    return sorted(
        ".".join(("loratrainer", *path.relative_to(root).with_suffix("").parts))
        for path in root.rglob("*.py")
        if defines.search(path.read_text(encoding="utf-8"))
    )


def message_templates() -> dict[str, str]:
    """Every coded message's English template (importing the modules that define them)."""
    from loratrainer.messages import ENGLISH

    for name in message_modules():
        importlib.import_module(name)
    return dict(ENGLISH)


def missing_keys() -> dict[str, list[str]]:
    """Keys each language lacks: every UI string of any table; for languages other than English (whose setting
    texts are the schema's and whose messages live beside the code) also every schema field's label and help,
    every group name and `msg.<code>` for every coded message."""
    from loratrainer.config import GROUPS, field_specs

    translated = {f"field.{s.path}.{what}" for s in field_specs() for what in ("label", "help")}
    translated |= {f"msg.{code}" for code in message_templates()}
    shared = {f"group.{g}" for g in GROUPS}
    for lang in LANGUAGES:
        shared |= {k for k in table(lang) if not k.startswith(("field.", "msg."))}
    out = {}
    for lang in LANGUAGES:
        keys = shared | translated if lang != DEFAULT_LANGUAGE else shared
        out[lang] = sorted(k for k in keys if not str(table(lang).get(k, "")).strip())
    return out


if __name__ == "__main__":
    for lang, keys in missing_keys().items():
        print(f"{lang}: {len(keys)} key(s) missing", *keys, sep="\n  ")
    sys.exit(0)
