"""Gradio's own words on the page ("Use via API", "Loading...", the upload box) in the page's language.

Gradio picks their language from the browser (navigator.language), so the Korean page of an English browser (the
"한국어" link, or `--language ko`) mixed English controls into Korean text. This middleware puts a script at the
top of each page's <head> that makes navigator.language the page's language before Gradio's code reads it (the
Blocks `head=` option comes too late: Gradio adds it after its translations are set up).
"""

from __future__ import annotations

from typing import Callable

from loratrainer.gui.html_body import send_rewritten_html

_MARK = b"<head>"


def language_script(lang: str) -> bytes:
    return (f'<script>for (const [k, v] of [["language", "{lang}"], ["languages", ["{lang}"]]]) '
            f'Object.defineProperty(navigator, k, {{get: () => v, configurable: true}});</script>').encode()


class PageLanguage:
    """For an HTML page, `language_of(path)` ("en", "ko" or None) decides the language told to Gradio."""

    def __init__(self, app, language_of: Callable[[str], str | None]):
        self.app, self.language_of = app, language_of

    async def __call__(self, scope, receive, send):
        lang = self.language_of(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "GET" else None
        if lang is None:
            await self.app(scope, receive, send)
            return

        def add_script(body: bytes) -> bytes:
            return body.replace(_MARK, _MARK + language_script(lang), 1) if _MARK in body else body

        await send_rewritten_html(self.app, scope, receive, send, add_script)
