"""Each hook of loratrainer/gui/gradio_adapter.py against the installed Gradio: the private thing it relies on still
exists and still behaves so. A failure here after a Gradio upgrade means a hook must be redone before the pin in
pyproject.toml is widened (docs/architecture.md, gui/)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from loratrainer.gui import gradio_adapter


@pytest.fixture(scope="module")
def gr():
    from loratrainer.gui.server import neutralise_gradio_env

    neutralise_gradio_env()
    import gradio

    return gradio


def _page(gr, handler=None):
    """A one-box page: a Textbox whose Button writes into a Markdown."""
    with gr.Blocks(analytics_enabled=False) as blocks:
        box = gr.Textbox(label="Folder")
        said = gr.Markdown(elem_id="said-message")
        gr.Button("Go").click(handler or (lambda text: f"got {text}"), inputs=[box], outputs=[said], api_name="go")
    return blocks


def _process(blocks, value: str) -> dict:
    """The event through Gradio's own processing (preprocess, call_function, postprocess), as a page click goes."""
    from gradio.state_holder import SessionState

    fn = next(iter(blocks.fns.values()))
    return asyncio.run(blocks.process_api(block_fn=fn, inputs=[value], state=SessionState(blocks)))


def test_quiet_queue_slows_the_loop_gradio_sleeps_in_when_idle(gr):
    blocks = _page(gr)
    queue = blocks._queue
    assert queue.sleep_when_free < gradio_adapter.IDLE_POLL_S  # Gradio's default (1 ms off Windows): the reason
    source = inspect.getsource(type(queue).start_processing)
    assert "asyncio.sleep(self.sleep_when_free)" in source  # the idle loop still sleeps on this attribute
    gradio_adapter.quiet_queue(blocks)
    assert queue.sleep_when_free == queue.progress_update_sleep_when_free == gradio_adapter.IDLE_POLL_S


def test_show_warning_reaches_the_queue_that_sends_notices(gr):
    blocks = _page(gr)
    params = inspect.signature(blocks._queue.log_message).parameters
    assert {"event_id", "log", "title", "level", "duration", "visible"} <= set(params)
    assert gradio_adapter.show_warning(blocks, None, "x") is False  # no page to tell: the caller raises instead
    sent = []
    blocks._queue.send_message = lambda event, message: sent.append((event, message))

    class Event:
        _id = "e1"

    blocks._queue.active_jobs = [[Event()]]
    assert gradio_adapter.show_warning(blocks, "e1", "Folder: no such folder") is True
    assert [(m.level, m.log) for _, m in sent] == [("warning", "Folder: no such folder")]
    # the public gr.Warning cannot do it: outside a running handler it finds no event and only warns in Python
    from gradio import helpers

    assert "LocalContext.event_id.get" in inspect.getsource(helpers.log_message)


def test_check_before_handlers_answers_instead_of_the_handler_on_gradios_own_path(gr):
    ran = []
    blocks = _page(gr, lambda text: ran.append(text) or f"got {text}")

    def check(inputs, values, outputs, event_id):
        assert inputs[0].label == "Folder" and outputs[0].elem_id == "said-message"
        return "✗ Folder: NUL" if "\0" in values[0] else gradio_adapter.NOT_REFUSED

    gradio_adapter.check_before_handlers(blocks, check)
    refused = _process(blocks, "a\0b")
    assert refused["data"] == ["✗ Folder: NUL"] and ran == []
    answered = _process(blocks, "/data")
    assert answered["data"] == ["got /data"] and ran == ["/data"]


def test_number_boxes_carry_no_gradio_bounds_because_gradio_refuses_them_naming_no_box(gr):
    """Why the gr.Number.preprocess patch could go: Gradio still refuses a value outside a box's bounds before any
    handler runs, in words that name no box; our boxes give Gradio no bounds and are checked by us."""
    from gradio.exceptions import Error

    with pytest.raises(Error) as refused:
        gr.Number(minimum=1, label="Epochs").preprocess(0)
    assert "Epochs" not in str(refused.value)
    from loratrainer.config import field_specs
    from loratrainer.gui.form import make_field, number_box
    from loratrainer.gui.i18n import Translator

    epochs = next(s for s in field_specs() if s.path == "training.epoch")
    assert epochs.minimum == 1
    with gr.Blocks():
        box = make_field(epochs, Translator("en"))
        other = number_box(1, minimum=1, label="Page")
    assert box.minimum is None and box.maximum is None and box.preprocess(0) == 0
    assert other.minimum is None and other.preprocess(0) == 0 and other.lt_bounds == (1, None)


def _served(gr, auth=None):
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    blocks = _page(gr)
    app = gr.mount_gradio_app(FastAPI(), blocks, path="/en", auth=auth, ssr_mode=False, mcp_server=False)
    return app, TestClient(app, base_url="http://127.0.0.1:7860")


def test_scrub_login_page_empties_the_api_description_of_gradios_login_page(gr):
    _, client = _served(gr, auth=("me", "secret"))
    with client:
        login = client.get("/en/").content
    assert b'"auth_required":true' in login and b"window.gradio_api_info" in login and b"/go" in login
    scrubbed = gradio_adapter.scrub_login_page(login)
    assert b"/go" not in scrubbed and b'{"named_endpoints":{},"unnamed_endpoints":{}}' in scrubbed
    _, client = _served(gr)
    with client:
        page = client.get("/en/").content
    assert b'"auth_required":true' not in page and gradio_adapter.scrub_login_page(page) == page


def test_tell_page_language_lands_before_gradio_reads_navigator_language(gr):
    _, client = _served(gr)
    with client:
        page = client.get("/en/").content
    told = gradio_adapter.tell_page_language(page, "ko")
    head = told.index(b"<head>")
    assert told.index(gradio_adapter.language_script("ko")) == head + len(b"<head>")
    assert told.index(gradio_adapter.language_script("ko")) < told.index(b"<script type=\"module\"")
    # Gradio's front end still takes the language of its own words from navigator.language
    assets = Path(gr.__file__).parent / "templates" / "frontend" / "assets"
    assert any("navigator.language" in p.read_text(errors="ignore") for p in assets.glob("runtime-*.js"))


def _route_paths(node, prefix=""):
    """Every route path under an app, through mounts and included routers (whatever FastAPI calls them)."""
    for route in getattr(node, "routes", None) or []:
        path = prefix + getattr(route, "path", "")
        if hasattr(route, "endpoint"):
            yield path
        for inner in (getattr(route, "app", None), getattr(route, "original_router", None)):
            if inner is not None and inner is not node:
                yield from _route_paths(inner, path if inner is getattr(route, "app", None) else prefix)


def test_file_route_markers_are_gradios_file_routes(gr):
    app, _ = _served(gr)
    paths = list(_route_paths(app))
    file_routes = [p for p in paths if "/file" in p and not p.endswith(("upload", "playlist-file")) and "custom_component" not in p]
    assert "/en/gradio_api/file={path_or_url:path}" in file_routes, paths
    assert file_routes and all(any(m in p for m in gradio_adapter.FILE_ROUTE_MARKERS) for p in file_routes), paths
    for path in ("/en/gradio_api/file=http://169.254.169.254/x", "/en/gradio_api/file/https://example.com/x", "/gradio_api/file=//h/x"):
        assert gradio_adapter.file_route_fetches_url(path)
    assert not gradio_adapter.file_route_fetches_url("/en/gradio_api/file=/tmp/loratrainer-gui-x/display/a.jpg")


def test_the_upload_and_login_routes_the_guards_watch_are_gradios(gr):
    """Hook 6b: the request limit watches Gradio's upload route and the login throttle its login route; both must be
    among the installed Gradio's routes of a mounted page (and nothing else of ours ends so)."""
    app, _ = _served(gr, auth=("me", "secret"))
    paths = list(_route_paths(app))
    uploads = [p for p in paths if gradio_adapter.is_upload_route(p)]
    logins = [p for p in paths if gradio_adapter.is_login_route(p)]
    assert "/en/gradio_api/upload" in uploads, paths
    assert "/en/login" in logins, paths
    assert not gradio_adapter.is_upload_route("/lt-upload/dataset") and not gradio_adapter.is_login_route("/en/logout")


def test_a_pages_login_is_asked_in_process_through_gradios_login_check_route(gr):
    """Hook 7: the upload route lets in only a request that passed a page's login. The page is found among the
    app's mounts (Gradio's App), and its login answered by `<page>/gradio_api/login_check` with the request's cookie."""
    import asyncio

    from starlette.requests import Request

    def request_with(client_cookies: dict) -> Request:
        cookie = "; ".join(f"{k}={v}" for k, v in client_cookies.items()).encode()
        return Request({"type": "http", "method": "POST", "path": "/lt-upload/dataset", "scheme": "http", "query_string": b"",
                        "headers": [(b"host", b"127.0.0.1:7860"), (b"cookie", cookie)], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 7860)})

    app, client = _served(gr, auth=("me", "secret"))
    with client:
        assert [prefix for prefix, _ in gradio_adapter.mounted_pages(app)] == ["/en"]
        (prefix, page), = gradio_adapter.mounted_pages(app)
        assert not asyncio.run(gradio_adapter.page_lets_in(page, prefix, request_with({})))
        assert client.post("/en/login", data={"username": "me", "password": "secret"}).status_code == 200
        assert asyncio.run(gradio_adapter.page_lets_in(page, prefix, request_with(dict(client.cookies))))
    app, client = _served(gr)  # a page without a login lets everyone in
    with client:
        (prefix, page), = gradio_adapter.mounted_pages(app)
        assert asyncio.run(gradio_adapter.page_lets_in(page, prefix, request_with({})))
