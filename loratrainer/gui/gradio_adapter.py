"""The one door to Gradio's internals: every place the GUI relies on something Gradio does not document.

Each hook below says why no public Gradio API does the job, and tests/test_gradio_adapter.py checks each against
the installed Gradio (the private name still exists and still behaves as relied on), so a Gradio release that
changes one fails a test instead of a user's page. pyproject.toml pins Gradio to the minor versions those tests
passed on. No other module touches a Gradio private name, its HTML or its route layout (tests/test_architecture.py).

Replaced by public API and gone: the class-wide patch of `gr.Number.preprocess` (Gradio refused an out-of-range
number before any handler, naming no box). Number boxes now get no Gradio bounds: a setting's bounds are checked
by the schema, another box's by `bounds_problem` in the guard below (form.number_box).
"""

from __future__ import annotations

import re
from typing import Any, Callable

# -- 1. the queue's idle poll ----------------------------------------------------------------------------------

# Gradio's queue loop checks for work every 1 ms when idle (gradio/queueing.py, Queue.sleep_when_free): 3-4 % of
# a core per page language with no browser connected. 50 ms is still instant for a click and idles near zero.
IDLE_POLL_S = 0.05


def quiet_queue(blocks) -> None:
    """Make the Blocks' queue look for work every IDLE_POLL_S when idle. Why private: `Blocks.queue()` takes no
    poll interval; the Queue object is `blocks._queue`, its interval `sleep_when_free`."""
    queue = blocks._queue
    if queue.sleep_when_free < IDLE_POLL_S:
        queue.sleep_when_free = IDLE_POLL_S
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, IDLE_POLL_S)


# -- 2. a notice from outside a handler ------------------------------------------------------------------------


def show_warning(blocks, event_id: str | None, text: str) -> bool:
    """Show `text` as a warning notice on the page that sent event `event_id`; False where there is no such page
    (the event was called outside the queue). Why private: the public `gr.Warning` finds the event through a
    context Gradio sets only while a handler runs, and the guard below refuses before any handler runs; both end
    in `blocks._queue.log_message`."""
    queue = getattr(blocks, "_queue", None)
    if event_id is None or queue is None:
        return False
    queue.log_message(event_id=event_id, log=text, title="", level="warning", duration=None, visible=True)
    return True


# -- 3. a check before every handler ---------------------------------------------------------------------------

# check(input components, their values, output components, event id) -> NOT_REFUSED to run the handler, or
# the outputs to answer instead
Check = Callable[[list, list, list, "str | None"], Any]
NOT_REFUSED = object()


def check_before_handlers(blocks, check: Check, around: Callable[[], Any] | None = None) -> None:
    """Run `check` before the handler of every event of `blocks`: what it returns (unless NOT_REFUSED) is the
    event's answer and the handler does not run. Why private: `Blocks.call_function` is where every event's
    preprocessed values arrive, with no public hook around it. The public `validator=` of each event listener is no
    replacement: it must be given to every listener of every tab, it can only put a badge on an input (not the
    sentence in the event's message area), and Gradio's own preprocessing runs before it. `around()`, an async
    context manager, is entered for the handler's run (later_language.PageBuilds.handler)."""
    call = blocks.call_function

    async def call_function(block_fn, processed_input, *args, **kwargs):
        fn = blocks.fns[block_fn] if isinstance(block_fn, int) else block_fn
        values = list(processed_input or [])
        answer = check(list(fn.inputs), values, list(fn.outputs), kwargs.get("event_id"))
        if answer is not NOT_REFUSED:
            return {"prediction": answer, "duration": 0.0, "is_generating": False, "iterator": None}
        if around is None:
            return await call(block_fn, values, *args, **kwargs)
        async with around():
            return await call(block_fn, values, *args, **kwargs)

    blocks.call_function = call_function


# -- 4. the login page's API description ------------------------------------------------------------------------

# Gradio's page embeds the API description (labels, defaults, absolute paths) as `window.gradio_api_info = {...}`
# in a <script>, and marks a page that asks for a login with "auth_required":true in its embedded config
# (gradio/routes.py, the main page route).
_AUTH_REQUIRED = b'"auth_required":true'
_API_INFO = re.compile(rb"(window\.gradio_api_info\s*=\s*)(.*?)(;?\s*</script>)", re.S)
_EMPTY_API_INFO = b'{"named_endpoints":{},"unnamed_endpoints":{}}'


def scrub_login_page(body: bytes) -> bytes:
    """A page that asks for a login, with an empty API description in place of Gradio's; any other page as it is.
    Why Gradio's HTML: Gradio embeds the description in the page before login, with no option to leave it out."""
    if _AUTH_REQUIRED in body:
        return _API_INFO.sub(lambda m: m.group(1) + _EMPTY_API_INFO + m.group(3), body)
    return body


# -- 5. Gradio's own words in the page's language ---------------------------------------------------------------

_HEAD = b"<head>"


def language_script(lang: str) -> bytes:
    return (f'<script>for (const [k, v] of [["language", "{lang}"], ["languages", ["{lang}"]]]) '
            f'Object.defineProperty(navigator, k, {{get: () => v, configurable: true}});</script>').encode()


def tell_page_language(body: bytes, lang: str) -> bytes:
    """The page with a script at the top of its <head> that makes navigator.language `lang`. Why private: Gradio's
    front end picks the language of its own words ("Use via API", "Loading...") from navigator.language when the
    page is rendered in the browser (no server-side rendering here), and the Blocks `head=` option is added after
    its translations are set up."""
    return body.replace(_HEAD, _HEAD + language_script(lang), 1) if _HEAD in body else body


# -- 6. the file route ------------------------------------------------------------------------------------------

# Gradio serves files at `<root>/gradio_api/file=<path or URL>` and its legacy twin `<root>/gradio_api/file/<path>`
# (gradio/routes.py); given an http(s) URL, the first fetches it server-side.
FILE_ROUTE_MARKERS = ("/file=", "/gradio_api/file/")


def file_route_fetches_url(path: str) -> bool:
    """Whether a request path asks Gradio's file route for a URL (which Gradio would fetch). Why Gradio's routes:
    `allowed_paths=[]` limits which local files the route serves, not the URLs it fetches."""
    target = None
    for marker in FILE_ROUTE_MARKERS:
        if marker in path:
            target = path.split(marker, 1)[1].lower()
    return target is not None and target.startswith(("http:", "https:", "//"))


# -- 6b. the upload and login routes ----------------------------------------------------------------------------


def is_upload_route(path: str) -> bool:
    """Gradio's file upload: `<page>/gradio_api/upload` (gradio/routes.py), where the request limit applies. Why
    Gradio's routes: its own `max_file_size` limits each file, not a whole request of many files."""
    return path.rstrip("/").endswith("/upload")


def is_login_route(path: str) -> bool:
    """Gradio's login form posts to `<page>/login` (gradio/routes.py); the login throttle counts those. Why Gradio's
    routes: Gradio has no limit on wrong passwords."""
    return path.rstrip("/").endswith("/login")


# -- 7. a page's login, asked by another route --------------------------------------------------------------------


def mounted_pages(app) -> list[tuple[str, Any]]:
    """The Gradio pages mounted on `app`: (path prefix, `app`). Why private: a mounted page is a Starlette Mount whose
    app is Gradio's App (it has `get_blocks`); Gradio has no public list of mounted pages."""
    from starlette.routing import Mount

    return [(r.path, app) for r in app.routes if isinstance(r, Mount) and hasattr(r.app, "get_blocks")]


async def page_lets_in(page_app, prefix: str, request) -> bool:
    """Whether the Gradio page at `prefix` of `page_app` lets `request` in (its login cookie; a page without a login
    lets everyone in). Why private: Gradio's login is its own route, `<page>/gradio_api/login_check` (200 when in,
    401 when not), with no public Python API; asked in-process with only the request's Host and cookies."""
    path = f"{prefix.rstrip('/')}/gradio_api/login_check"
    headers = [(k, v) for k, v in request.scope.get("headers", []) if k in (b"host", b"cookie")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": request.url.scheme,
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
             "client": request.scope.get("client"), "server": request.scope.get("server")}
    status = [0]

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    await page_app.router(scope, receive, send)
    return status[0] == 200
