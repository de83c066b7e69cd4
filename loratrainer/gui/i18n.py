"""Every user-facing string of the GUI, in English and Korean (loratrainer/i18n/<lang>.json).

One flat table per language: named UI strings, `group.<group>` for the Advanced accordions and `msg.<code>` for
coded messages. A setting's English label and help are the schema's (its field's title and description, in
loratrainer/config/schema.py); other languages translate them as `field.<path>.label` and `field.<path>.help` (the path
is the component's name). Messages may hold `{name}` placeholders filled by `Translator.__call__(key, name=...)`.

The language follows the browser (Accept-Language, which Chromium and Firefox derive from navigator.language);
`loratrainer gui --language ko|en` forces it. A missing key falls back to English, then to the key itself, so
a half-translated table never breaks the page; tests/test_gui_i18n.py keeps both tables complete (the audit,
tests/i18n_audit.py: `python -m tests.i18n_audit` lists the keys a language still lacks).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

from loratrainer.errors import UserError

LANGUAGES = ("en", "ko")
DEFAULT_LANGUAGE = "en"


@lru_cache(maxsize=None)
def table(lang: str) -> dict[str, str]:
    text = resources.files("loratrainer").joinpath("i18n").joinpath(f"{lang}.json").read_text(encoding="utf-8")
    return json.loads(text)


class Translator:
    """`t("msg.key", n=3)` -> the string in this translator's language."""

    def __init__(self, lang: str):
        if lang not in LANGUAGES:
            raise ValueError(f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)}")
        self.lang = lang

    def __call__(self, key: str, **values: object) -> str:
        text = table(self.lang).get(key) or table(DEFAULT_LANGUAGE).get(key) or key
        return text.format(**values) if values else text

    def message(self, message: object) -> str:
        """A coded message (loratrainer/messages.py) in this language: `msg.<code>`, else its English text."""
        from loratrainer.messages import Msg

        if not isinstance(message, Msg):
            return str(message)
        # Both languages name settings as the page labels them (the CLI's English says their paths): a Label
        # parameter becomes the label, and `msg.<code>` in the page's table may reword a sentence that names one.
        own = table(self.lang)
        return message.render(lambda code: own.get(f"msg.{code}"), self.label_or_path)

    def error(self, exc: BaseException) -> str:
        """An error as the page shows it ("**Error:** ..."), as a sentence (messages are written to follow "error: ")."""
        return self("error.generic", error=md(sentence(self.error_text(exc), self.lang)))

    def error_text(self, exc: BaseException) -> str:
        """The error in this language where it says what it is: bad form values by pydantic's error type, coded
        messages by code; other errors keep their own text."""
        if not isinstance(exc, UserError):
            return str(exc)
        if exc.fields:
            return "; ".join(self._field_error(f) for f in exc.fields)
        if exc.msg is None:
            return str(exc)
        text = self.message(exc.msg)
        return f"{exc.path}: {text}" if exc.path is not None else text

    _FIELD_ERRORS = {"int_type": "int_parsing", "int_from_float": "int_parsing", "float_type": "float_parsing"}

    def _field_error(self, f: dict) -> str:
        path = f["path"]
        label = self.label_or_path(path)
        coded = getattr(f["ctx"].get("error"), "msg", None)  # our validators' MsgError (a cross-field rule: no path)
        if f["type"] == "value_error" and coded is not None:
            text = self.message(coded)
            return f"{label}: {text}" if path else text
        key = "form." + self._FIELD_ERRORS.get(f["type"], f["type"])
        if f.get("input") is None and key in ("form.float_parsing", "form.int_parsing"):
            key = "form.missing"  # an emptied number box: "(got None)" says nothing to a user
        if key in table(DEFAULT_LANGUAGE):
            ctx = {k: v for k, v in f["ctx"].items() if k in ("ge", "le", "gt", "lt", "expected", "min_length", "max_length")}
            if self.lang != DEFAULT_LANGUAGE and isinstance(ctx.get("expected"), str):
                ctx["expected"] = ctx["expected"].replace(" or ", ", ")  # pydantic's "'a', 'b' or 'c'"
            try:
                return self(key, label=label, got=repr(f["input"]), **ctx)
            except (KeyError, IndexError):
                pass
        return f"{label}: {f['msg']}"

    def label_or_path(self, path: str) -> str:
        """A setting's label on this page; the path itself where the schema has no such field."""
        return self.label(path) if path in _specs() else path

    def problem(self, problem) -> str:
        """A dataset Problem's line in this language (its English message when it has no code)."""
        return self.message(problem.msg) if problem.msg is not None else problem.message

    def label(self, path: str) -> str:
        return self._field_text(path, "label")

    def help(self, path: str) -> str:
        return self._field_text(path, "help")

    def _field_text(self, path: str, what: str) -> str:
        """This language's `field.<path>.<what>`, else the schema's English (title or description)."""
        key = f"field.{path}.{what}"
        own = table(self.lang).get(key) if self.lang != DEFAULT_LANGUAGE else None
        spec = _specs().get(path)
        return own or (getattr(spec, what) if spec is not None else key)


@lru_cache(maxsize=1)
def _specs() -> dict:
    from loratrainer.config import field_specs

    return {s.path: s for s in field_specs()}


# A plain lower-case English word and what may follow it ("the zip ...", "cannot read ...", "no images,"): a
# file name ("evil.zip"), a path ("/home/...", "data: ..."), a setting key ("lr_warmup_steps") or a quoted
# name never matches, so it keeps its case.
_PLAIN_WORD = re.compile(r"[a-z]+(?=[ ,;]|$)")


def sentence(text: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """`text` as a sentence shown on its own or after "Not started.": its first letter capitalised where it
    begins with a plain English word. Only English has case to fix: another language's text (Korean) and a
    sentence that begins with a name (file, path, setting key, quoted) stay as they are."""
    if lang != "en" or not _PLAIN_WORD.match(text):
        return text
    return text[:1].upper() + text[1:]


def md(text: str) -> str:
    """Text from elsewhere (an error, a path) made safe inside Markdown: `<name>` must not vanish as a tag."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pick_language(accept_language: str | None, forced: str | None = None) -> str:
    """The first supported language in an Accept-Language header ("ko-KR,ko;q=0.9,en;q=0.8" -> "ko")."""
    if forced:
        return forced
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        pieces = part.strip().split(";")
        tag = pieces[0].strip().lower()
        q = 1.0
        for p in pieces[1:]:
            p = p.strip()
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if tag:
            ranked.append((-q, i, tag.split("-")[0]))
    for _, _, lang in sorted(ranked):
        if lang in LANGUAGES:
            return lang
    return DEFAULT_LANGUAGE
