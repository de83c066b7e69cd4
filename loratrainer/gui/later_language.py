"""The second page language, built when it is first asked for instead of before the GUI answers.

Building a page in one language takes about half of the time between `loratrainer gui` and the first answer
after importing Gradio (bench/bench_gui_start.py); a user reads one language and may never open the other. So the
language the user most likely reads (the machine's locale) is built at start, and the other at its first request:
that request waits for it once (about half a second), and every later one is served as usual.

A page is built only while no handler runs: Gradio keeps the page being built in process-wide globals, and a
component a handler creates meanwhile (`gr.Timer(active=False)` in an answer) would land in that page. Every
handler passes through `PageBuilds.handler()` (app.guard_text_inputs), so a build waits for the handlers under
way and holds new ones until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, Callable

POLL_S = 0.01


class PageBuilds:
    """Handlers and page builds take turns (see the module's docstring). Used on the server's event loop only."""

    def __init__(self):
        self.handlers = 0
        self.building = False

    @contextlib.asynccontextmanager
    async def handler(self):
        while self.building:
            await asyncio.sleep(POLL_S)
        self.handlers += 1
        try:
            yield
        finally:
            self.handlers -= 1

    async def build(self, make: Callable[[], Any]) -> Any:
        while self.building:
            await asyncio.sleep(POLL_S)
        self.building = True
        try:
            while self.handlers:
                await asyncio.sleep(POLL_S)
            return make()
        finally:
            self.building = False


PAGE_BUILDS = PageBuilds()  # one per process: the globals it protects are Gradio's, one per process too


def locale_language(environ: dict | None = None) -> str:
    """"ko" where the machine's locale is Korean (LC_ALL, LC_MESSAGES, LANG), else "en": the page built first."""
    env = os.environ if environ is None else environ
    value = env.get("LC_ALL") or env.get("LC_MESSAGES") or env.get("LANG") or ""
    return "ko" if value.lower().startswith("ko") else "en"


class LaterLanguages:
    """The pages of the languages not built at start: `make(lang)` returns an ASGI app (with a lifespan) serving
    `/<lang>/`, called at the first request under that path. `shutdown()` ends the pages started meanwhile."""

    def __init__(self, make: Callable[[str], Any], languages: list[str], builds: PageBuilds = PAGE_BUILDS):
        self.make, self.languages, self.builds = make, list(languages), builds
        self.apps: dict[str, Any] = {}
        self.tasks: list[asyncio.Task] = []
        self.lock: asyncio.Lock | None = None
        self.stop: asyncio.Event | None = None

    def language_of(self, path: str) -> str | None:
        return next((lang for lang in self.languages if path == f"/{lang}" or path.startswith(f"/{lang}/")), None)

    async def app_for(self, lang: str):
        if self.lock is None or self.stop is None:
            self.lock, self.stop = asyncio.Lock(), asyncio.Event()
        async with self.lock:
            if lang not in self.apps:
                app = await self.builds.build(lambda: self.make(lang))
                started = asyncio.get_running_loop().create_future()
                self.tasks.append(asyncio.create_task(self._run(app, started, self.stop)))
                await started
                self.apps[lang] = app
        return self.apps[lang]

    async def _run(self, app, started: asyncio.Future, stop: asyncio.Event) -> None:
        """The page app's startup (Gradio starts its queue there) and, at the GUI's shutdown, its shutdown."""
        try:
            async with app.router.lifespan_context(app):
                started.set_result(None)
                await stop.wait()
        except BaseException as exc:
            if started.done():
                raise
            started.set_exception(exc)  # the request that asked for the page says it; the next one tries again

    async def shutdown(self) -> None:
        if self.stop is not None:
            self.stop.set()
            await asyncio.gather(*self.tasks, return_exceptions=True)


class LaterLanguageRoute:
    """ASGI middleware: a request under a later language's path goes to its page, built at the first one; at the
    server's shutdown those pages shut down first."""

    def __init__(self, app, later: LaterLanguages):
        self.app, self.later = app, later

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":

            async def shutting_down():
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    await self.later.shutdown()
                return message

            await self.app(scope, shutting_down, send)
            return
        lang = self.later.language_of(scope.get("path", "")) if scope["type"] in ("http", "websocket") else None
        if lang is None:
            await self.app(scope, receive, send)
            return
        page = await self.later.app_for(lang)
        await page(scope, receive, send)
