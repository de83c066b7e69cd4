"""Gradio's own words on the page ("Use via API", "Loading...", the upload box) in the page's language.

Gradio picks their language from the browser, so the Korean page of an English browser (the "한국어" link, or
`--language ko`) mixed English controls into Korean text. This middleware tells each HTML page its language
before Gradio's code reads the browser's (gradio_adapter.tell_page_language says how).
"""

from __future__ import annotations

from typing import Callable

from loratrainer.gui.gradio_adapter import tell_page_language
from loratrainer.gui.html_body import send_rewritten_html


class PageLanguage:
    """For an HTML page, `language_of(path)` ("en", "ko" or None) decides the language told to Gradio."""

    def __init__(self, app, language_of: Callable[[str], str | None]):
        self.app, self.language_of = app, language_of

    async def __call__(self, scope, receive, send):
        lang = self.language_of(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "GET" else None
        if lang is None:
            await self.app(scope, receive, send)
            return

        await send_rewritten_html(self.app, scope, receive, send, lambda body: tell_page_language(body, lang))
