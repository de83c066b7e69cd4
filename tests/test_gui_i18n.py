"""Both languages are complete: every schema field has a label and help text in English and Korean, every UI
string exists in both tables with the same placeholders, and the Korean page shows no English label."""

from __future__ import annotations

import re
import string

import pytest

from loratrainer.config import field_specs
from loratrainer.gui.i18n import LANGUAGES, Translator, pick_language, table
from tests.i18n_audit import missing_keys

HANGUL = re.compile(r"[\uac00-\ud7a3]")
# Korean strings that are rightly the same as in English: names, units, symbols.
SAME_IN_KOREAN = {"field.model.vae.label", "field.loss.huber_c.label", "progress.speed", "error.generic",
                  "msg.model.part.unet", "msg.model.part.vae"}  # a model part's name, the same in Korean


def test_no_language_misses_a_key():
    assert missing_keys() == {lang: [] for lang in LANGUAGES}


def test_every_schema_field_has_label_and_help():
    ko = table("ko")
    for spec in field_specs():
        assert spec.label.strip() and spec.help.strip(), f"the schema has no English label or help for {spec.path}"
        assert ko.get(f"field.{spec.path}.label", "").strip(), f"ko: no label for {spec.path}"
        assert ko.get(f"field.{spec.path}.help", "").strip(), f"ko: no help for {spec.path}"


def test_english_label_and_help_are_the_schema_s():
    """The schema is where English labels and help texts are written, once: en.json holds no copy."""
    en = Translator("en")
    assert [(s.path, en.label(s.path), en.help(s.path)) for s in field_specs()] == [(s.path, s.label, s.help) for s in field_specs()]
    assert not [k for k in table("en") if k.startswith("field.")]
    assert Translator("ko").label("network.network_dim") == table("ko")["field.network.network_dim.label"]


def test_korean_table_is_korean():
    ko = table("ko")
    english_only = [k for k, v in ko.items() if k not in SAME_IN_KOREAN and not HANGUL.search(v) and not k.startswith("app.other_language")]
    assert not english_only


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_placeholders_match():
    en, ko = table("en"), table("ko")
    assert [k for k in en if _fields(en[k]) != _fields(ko.get(k, ""))] == []


def test_translator_formats_and_falls_back():
    t = Translator("ko")
    assert HANGUL.search(t("status.running", step=1, total=2, epoch=1, epochs=1))
    assert t("no.such.key") == "no.such.key"
    assert Translator("en").label("network.network_dim") == "Network rank (dimension)"


def test_an_error_that_begins_with_a_name_keeps_its_case():
    """Only a plain English first word is capitalised: a Korean page's error that begins with the user's file
    name shows the name as it is ("evil.zip", not "Evil.zip"), and so does an English one that begins with a
    path or a setting key."""
    import loratrainer.data.upload  # noqa: F401  (defines the upload messages)
    from loratrainer.errors import UserError
    from loratrainer.messages import Msg

    broken = UserError(Msg.of("upload.zip.broken", zip="evil.zip", reason="File is not a zip file"))
    korean = Translator("ko").error(broken)
    assert "evil.zip은(는)" in korean and "Evil.zip" not in korean
    english = Translator("en").error(broken)
    assert "The upload evil.zip is not a readable zip file" in english  # English still begins with a capital
    # a message about a file, the file's path first
    assert "/home/me/evil.zip: " in Translator("en").error(UserError(Msg.of("upload.zip.broken", zip="x", reason="r"), path="/home/me/evil.zip"))
    assert "evil.zip: " in Translator("ko").error(UserError(Msg.of("upload.zip.broken", zip="x", reason="r"), path="evil.zip"))
    assert "lr_warmup_steps is" in Translator("en").error(ValueError("lr_warmup_steps is more than the run's steps"))
    assert "'data' is" in Translator("en").error(ValueError("'data' is not a folder"))


@pytest.mark.parametrize(
    "header,forced,expected",
    [
        ("ko-KR,ko;q=0.9,en-US;q=0.8", None, "ko"),
        ("en-US,en;q=0.9,ko;q=0.8", None, "en"),
        ("de-DE,ko;q=0.5", None, "ko"),
        ("en;q=0.1,ko;q=0.9", None, "ko"),
        ("", None, "en"),
        (None, None, "en"),
        ("ko-KR", "en", "en"),
    ],
)
def test_language_follows_the_browser(header, forced, expected):
    assert pick_language(header, forced) == expected


def _texts(config: dict) -> list[tuple[str, str]]:
    """(prop, text) of every label, help text, button and markdown value on the page."""
    out = []
    for comp in config["components"]:
        props = comp.get("props", {})
        for prop in ("label", "info", "value", "placeholder"):
            v = props.get(prop)
            if isinstance(v, str) and v.strip() and (prop != "value" or comp.get("type") in ("button", "markdown")):
                out.append((f"{comp.get('type')}.{prop}", v))
    return out


def test_korean_page_has_no_english_text(tmp_path):
    from loratrainer.gui.server import neutralise_gradio_env

    neutralise_gradio_env()
    from loratrainer.gui.app import build_blocks
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    blocks = build_blocks("ko", Jobs(tmp_path / "state"), Display(tmp_path / "display"))
    texts = _texts(blocks.get_config_file())
    assert len(texts) > 150
    ko_values = set(table("ko").values())
    english = [(p, v) for p, v in texts if not HANGUL.search(v) and v not in ko_values and not v.startswith("## loratrainer")]
    assert english == []
    en_values = {v for k, v in table("en").items() if k not in SAME_IN_KOREAN and HANGUL.search(table("ko")[k])}
    en_values |= {text for s in field_specs() for what, text in (("label", s.label), ("help", s.help))
                  if f"field.{s.path}.{what}" not in SAME_IN_KOREAN}
    assert not [v for _, v in texts if v in en_values]
