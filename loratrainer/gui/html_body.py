"""Rewrite the body of the HTML pages an ASGI app sends, leaving every other response as it streams.

The middlewares in front of the Gradio app that change a page (web_guards.LoginPageScrub, page_language.PageLanguage)
share this: buffer the page's body, change it once it is complete, and send it with a corrected Content-Length.
"""

from __future__ import annotations

from typing import Callable

Transform = Callable[[bytes], bytes]


async def send_rewritten_html(app, scope, receive, send, transform: Transform) -> None:
    """Run `app`; a text/html response's complete body goes through `transform` before it is sent."""
    start: dict = {}
    chunks: list[bytes] = []
    passthrough = [False]

    async def rewritten(message) -> None:
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
        body = transform(b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    await app(scope, receive, rewritten)


