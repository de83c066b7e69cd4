"""One error type: what the CLI prints (English, `<path>: <reason>`) and what a page needs to say it in its
language (the code, the path, the bad form fields) are attributes of UserError, not guessed per class."""

from __future__ import annotations

from pathlib import Path

import loratrainer.caption.run  # noqa: F401  (defines captioning.folder_missing)
from loratrainer.data.captions import CaptionError
from loratrainer.errors import UserError
from loratrainer.gui.i18n import Translator
from loratrainer.messages import Msg


def test_a_coded_error_with_a_path_reads_the_same_in_english_and_is_translated_in_korean(tmp_path):
    exc = CaptionError(tmp_path / "a.txt", Msg.of("caption.not_utf8"))
    assert isinstance(exc, UserError) and exc.code == "caption.not_utf8" and exc.path == tmp_path / "a.txt"
    english = f"{tmp_path / 'a.txt'}: the caption is not UTF-8 text: open it in an editor and save it as UTF-8"
    assert str(exc) == english == Translator("en").error_text(exc)
    korean = Translator("ko").error_text(exc)
    assert korean.startswith(f"{tmp_path / 'a.txt'}: ") and "UTF-8" in korean and "open it" not in korean


def test_plain_and_coded_errors_without_a_path():
    plain = UserError("give both --username and --password, or neither")
    assert plain.code is None and plain.path is None and plain.fields == []
    assert Translator("ko").error_text(plain) == str(plain)
    coded = UserError(Msg.of("captioning.folder_missing"))
    assert str(coded) == "choose the image folder first" and coded.reason == Msg.of("captioning.folder_missing")
    assert Translator("ko").error_text(coded) != str(coded)
    assert Translator("ko").error_text(ValueError("x")) == "x"  # not ours: its own text


def test_path_is_a_path():
    assert UserError("bad", path="some/file.json").path == Path("some/file.json")
