"""The two middlewares that change a page before the browser gets it (the page language script, the login
page's API description) rewrite only complete HTML bodies and send a Content-Length that matches."""

from __future__ import annotations

import asyncio

from loratrainer.gui.page_language import PageLanguage
from loratrainer.gui.web_guards import LoginPageScrub


def _app(content_type: bytes, chunks: list[bytes]):
    async def app(scope, receive, send):
        size = str(sum(map(len, chunks))).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type), (b"content-length", size)]})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
    return app


def _serve(middleware, path: str = "/") -> tuple[dict, bytes, list[dict]]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request"}

    asyncio.run(middleware({"type": "http", "method": "GET", "path": path}, receive, send))
    headers = dict(sent[0]["headers"])
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return headers, body, sent


def test_the_korean_page_gets_the_language_script_in_its_head_even_when_the_page_comes_in_pieces():
    page = [b"<html><he", b"ad><title>x</title></head>", b"<body>ok</body></html>"]
    headers, body, _ = _serve(PageLanguage(_app(b"text/html; charset=utf-8", page), lambda path: "ko"))
    assert body.startswith(b"<html><head><script>") and b'"ko"' in body and body.endswith(b"<body>ok</body></html>")
    assert int(headers[b"content-length"]) == len(body)


def test_other_responses_stream_through_untouched():
    data = [b'{"a":', b" 1}"]
    headers, body, sent = _serve(PageLanguage(_app(b"application/json", data), lambda path: "ko"))
    assert body == b"".join(data) and len(sent) == 3  # the start and both pieces, as they came
    headers, body, _ = _serve(PageLanguage(_app(b"text/html", [b"<head></head>"]), lambda path: None))
    assert body == b"<head></head>"


def test_a_login_page_loses_its_api_description_and_other_pages_keep_theirs():
    api = b'<script>window.gradio_api_info = {"named_endpoints":{"/load_preset":{}}};</script>'
    login = [b'<html>{"auth_required":true}', api, b"</html>"]
    headers, body, _ = _serve(LoginPageScrub(_app(b"text/html", login)))
    assert b"/load_preset" not in body and b'{"named_endpoints":{},"unnamed_endpoints":{}}' in body
    assert int(headers[b"content-length"]) == len(body)
    open_page = [b"<html>", api, b"</html>"]
    _, body, _ = _serve(LoginPageScrub(_app(b"text/html", open_page)))
    assert body == b"".join(open_page)
