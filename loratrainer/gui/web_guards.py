"""ASGI guards in front of the Gradio app, for what a web page the user visits, or someone on the network, could
otherwise do (docs/reliability.md, "The web interface"):

- OriginGuard: a request carrying a foreign `Origin` (another web site's script) is refused on every bind address,
  loopback included; Gradio itself answers `Access-Control-Allow-Origin` to any origin on loopback, which let a
  visited page start training, write files and read the answers.
- UploadLimit: uploads larger than the app ever needs (it uploads JSON config files) are refused.
- LoginThrottle: after a few wrong passwords from one address, logins from it wait a minute.
- LoginPageScrub: Gradio's login page embeds the whole API description (labels, defaults, absolute paths);
  before login it gets an empty one.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from typing import Callable

from loratrainer.gui.gradio_adapter import is_login_route, is_upload_route, scrub_login_page
from loratrainer.gui.html_body import send_rewritten_html
from loratrainer.messages import Msg, define

define({
    "web.cross_origin": "Cross-origin request refused.",
    "web.upload_too_large": "Upload larger than {mb} MB refused.",
})

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
MAX_UPLOAD_BYTES = 4 * 1024 * 1024  # the largest config file (config.files.MAX_CONFIG_BYTES) plus multipart overhead
LOGIN_FAILURES = 5  # wrong passwords per address ...
LOGIN_WINDOW_S = 60.0  # ... within this time, before its logins wait


async def _refuse(send, status: int, text: str | Msg, scope=None) -> None:
    code = text.code if isinstance(text, Msg) else None  # the upload page's script says a refusal by its code
    if isinstance(text, Msg):  # said in the language of the page that asked (its /ko/ path, else Accept-Language)
        from loratrainer.gui.i18n import Translator, pick_language

        path = scope.get("path", "") if scope else ""
        lang = next((lang for lang in ("en", "ko") if path.startswith(f"/{lang}/")), None)
        text = Translator(lang or pick_language(_headers(scope).get("accept-language") if scope else None)).message(text)
    body = json.dumps({"detail": text, **({"code": code} if code else {})}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def foreign_origin(scope) -> bool:
    """A browser request made by a page of another origin: its Origin is not this server as addressed (the Host
    header, which TrustedHostMiddleware has already checked), or, for a state-changing request without Origin,
    Sec-Fetch-Site says cross-site. Clients that are not browsers send neither and pass."""
    headers = _headers(scope)
    origin = headers.get("origin")
    host = headers.get("host", "")
    if origin is not None:
        return origin.rstrip("/").lower() not in (f"http://{host}".lower(), f"https://{host}".lower())
    method = scope.get("method", "GET")
    site = headers.get("sec-fetch-site")
    return (method in STATE_CHANGING or scope["type"] == "websocket") and site not in (None, "same-origin", "none")


class OriginGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and foreign_origin(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _refuse(send, 403, Msg.of("web.cross_origin"), scope)
            return
        await self.app(scope, receive, send)


class UploadLimit:
    """Refuse an upload whose declared or actual size exceeds MAX_UPLOAD_BYTES (a body streamed without a length is
    counted as it arrives and cut off)."""

    def __init__(self, app, limit: int = MAX_UPLOAD_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not is_upload_route(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        length = _headers(scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _refuse(send, 413, Msg.of("web.upload_too_large", mb=self.limit // (1024 * 1024)), scope)
            return
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _refuse(send, 413, Msg.of("web.upload_too_large", mb=self.limit // (1024 * 1024)), scope)


class _TooLarge(Exception):
    pass


class LoginThrottle:
    """After LOGIN_FAILURES wrong logins from one address within LOGIN_WINDOW_S, its logins get 429 (the right
    password too) until the window has passed; `message(path)` is what the page says, in the page's language."""

    def __init__(self, app, message: Callable[[str], str], clock: Callable[[], float] = time.monotonic):
        self.app, self.message, self.clock = app, message, clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures[client]
        while failures and self.clock() - failures[0] > LOGIN_WINDOW_S:
            failures.popleft()
        return failures

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not is_login_route(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        with self._lock:
            if len(self._recent(client)) >= LOGIN_FAILURES:
                await _refuse(send, 429, self.message(scope.get("path", "")))
                return
        status = [0]

        async def watched(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, watched)
        if status[0] >= 400:
            with self._lock:
                self._recent(client).append(self.clock())


class LoginPageScrub:
    """On a page that asks for a login, replace the embedded API description (gradio_adapter.scrub_login_page)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await send_rewritten_html(self.app, scope, receive, send, scrub_login_page)
