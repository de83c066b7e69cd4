"""Gradio's own words on the page ("Use via API", "Loading...", the upload box) in the page's language.

Gradio picks their language from the browser (navigator.language), so the Korean page of an English browser (the
"한국어" link, or `--language ko`) mixed English controls into Korean text. This middleware puts a script at the
top of each page's <head> that makes navigator.language the page's language before Gradio's code reads it (the
Blocks `head=` option comes too late: Gradio adds it after its translations are set up).
"""

from __future__ import annotations

from typing import Callable

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
        start: dict = {}
        chunks: list[bytes] = []
        passthrough = [False]

        async def rewritten(message):
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if not content_type.startswith(b"text/html"):
                    passthrough[0] = True
                    await send(message)
                    return
                start.update(message)
                return
            if passthrough[0] or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if _MARK in body:
                body = body.replace(_MARK, _MARK + language_script(lang), 1)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewritten)
