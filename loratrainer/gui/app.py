"""The GUI application: one Gradio Blocks per language, mounted in a FastAPI app that checks the Host header.

Tabs follow the order of the work (Dataset, Training, Results, Utilities), one module each. This module only
assembles them; it starts processes through jobs.py and never trains.

Languages: with `--language` one Blocks in that language is served at `/`. Otherwise both are built, served at
`/en/` and `/ko/`, and `/` redirects by the browser's Accept-Language (the browser derives it from
navigator.language), so every label, help text and message of a page is in one language, server-side.
"""

from __future__ import annotations

from pathlib import Path

from loratrainer.gui.i18n import LANGUAGES, Translator, pick_language
from loratrainer.gui.server import ServeOptions, allowed_hosts, is_loopback

CSS = """
.lt-status {font-weight: 600;}
.lt-progress {width: 100%; height: 14px; border-radius: 7px; background: var(--block-border-color); overflow: hidden;}
.lt-progress > div {height: 100%; background: var(--color-accent);}
.lt-ok {color: var(--color-green-600, #16a34a);} .lt-bad {color: var(--color-red-600, #dc2626);}
.lt-log textarea {font-family: var(--font-mono); font-size: 12px;}
/* Browse… beside its path box, level with the box's input field rather than with its label and help above */
.lt-path-row {align-items: flex-end !important; flex-wrap: nowrap !important; gap: 8px !important;}
.lt-path-row .lt-browse {align-self: flex-end !important; margin-bottom: calc(var(--spacing-xl, 10px) + var(--block-border-width, 1px)) !important;}
/* the live view is refreshed every second: Gradio's "pending" dimming and flashing would make it flicker */
.lt-live .pending, .lt-live.pending {opacity: 1 !important; animation: none !important;}
/* the "Start anyway?" question: its text off the box's edge */
#confirm-start {padding: 12px 16px !important;}
/* the caption editor: a caption under its thumbnail wraps to three lines instead of ending after ~15 characters */
#ed-gallery .caption-label {white-space: normal !important; max-width: 100% !important; left: 0; max-height: 4.6em; overflow: hidden;}
"""


def build_blocks(lang: str, jobs, display, *, other_language_url: str | None = None, browse_limited: bool = False,
                 browse_folders: tuple[str, ...] = ()):
    """The whole page in one language. `jobs` and `display` are shared by every session (and both languages)."""
    return build_page(lang, jobs, display, other_language_url=other_language_url, browse_limited=browse_limited,
                      browse_folders=browse_folders)[0]


def build_page(lang: str, jobs, display, *, other_language_url: str | None = None, browse_limited: bool = False,
               browse_folders: tuple[str, ...] = ()):
    """(blocks, ui): the page and its UiContext, whose `handlers` hold each tab's handler object for tests."""
    import gradio as gr

    from loratrainer.gui import tab_dataset, tab_queue, tab_results, tab_training, tab_utilities
    from loratrainer.gui.context import UiContext

    t = Translator(lang)
    ui = UiContext(t=t, jobs=jobs, display=display, browse_limited=browse_limited, browse_folders=tuple(browse_folders))
    with gr.Blocks(title="loratrainer", analytics_enabled=False) as blocks:
        with gr.Row():
            gr.Markdown(f"## loratrainer · {t('app.subtitle')}")
            if other_language_url:
                gr.HTML(f'<div style="text-align:right"><a href="{other_language_url}">{t("app.other_language")}</a></div>')
        with gr.Tabs() as ui.named["tabs"]:  # the Queue tab's "Show live view" selects the Training tab
            for name, module in (("dataset", tab_dataset), ("training", tab_training), ("results", tab_results), ("queue", tab_queue),
                                 ("utilities", tab_utilities)):
                with gr.Tab(t(f"tab.{name}"), id=name, elem_id=f"tab-{name}") as ui.named[f"tab_{name}"]:
                    ui.handlers[name] = module.build(ui)
        ui.finish(blocks)
    quiet_queue(blocks)
    guard_text_inputs(blocks, t)
    return blocks, ui


# Gradio's queue loop checks for work every 1 ms when idle (gradio/queueing.py, sleep_when_free): 3-4 % of a core
# per page language with no browser connected. 50 ms is still instant for a click and idles near zero.
IDLE_POLL_S = 0.05


def quiet_queue(blocks) -> None:
    queue = getattr(blocks, "_queue", None)
    if queue is not None and getattr(queue, "sleep_when_free", 0) < IDLE_POLL_S:
        queue.sleep_when_free = IDLE_POLL_S
        queue.progress_update_sleep_when_free = max(getattr(queue, "progress_update_sleep_when_free", 0), IDLE_POLL_S)


MAX_LINE_BYTES = 4096  # PATH_MAX on Linux: no file or folder path is longer, and no one-line setting needs more


def text_problem(value: object, one_line: bool) -> str | None:
    """Why a text input cannot be used ("nul" / "too_long"), or None: the one validation of every path box."""
    texts = value if isinstance(value, (list, tuple)) else [value]
    for text in texts:
        if isinstance(text, str):
            if "\0" in text:
                return "nul"
            if one_line and len(text.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
                return "too_long"
    return None


def guard_text_inputs(blocks, t: Translator) -> None:
    """Before any handler runs, refuse a NUL character in any text, a one-line box (every path box is one) over
    MAX_LINE_BYTES, or a number outside its box's minimum/maximum, with one sentence naming the box as the page
    labels it. Without this, eight handlers showed
    `embedded null byte` or `[Errno 36] File name too long` tracebacks (docs/reliability.md, "Paths").

    The sentence goes where the event's own answers go (its message area, see refusal_prediction) and nothing else
    changes. Raising gr.Error instead would put a bare red "Error" badge on every output of the event."""
    import gradio as gr

    keep_out_of_range(gr.Number)
    call = blocks.call_function

    async def call_function(block_fn, processed_input, *args, **kwargs):
        fn = blocks.fns[block_fn] if isinstance(block_fn, int) else block_fn
        processed_input = list(processed_input or [])
        for i, (component, value) in enumerate(zip(fn.inputs, processed_input)):
            label = getattr(component, "label", None) or getattr(component, "elem_id", None) or "?"
            if isinstance(value, OutOfRange) and "lt-field" in (component.elem_classes or []):
                # a setting: the handler reads it through the schema, which refuses it naming the setting, and
                # Start's refusal clears the last run's view as any other refusal does
                processed_input[i] = value.value
                continue
            text: str | None
            if isinstance(value, OutOfRange):
                text = value.sentence(t, label)
            else:
                one_line = isinstance(component, gr.Textbox) and (component.max_lines or component.lines or 1) <= 1
                problem = text_problem(value, one_line)
                text = t(f"error.text_{problem}", label=label, limit=MAX_LINE_BYTES) if problem else None
            if text:
                return {"prediction": refusal_prediction(blocks, fn, text, kwargs.get("event_id")), "duration": 0.0,
                        "is_generating": False, "iterator": None}
        return await call(block_fn, processed_input, *args, **kwargs)

    blocks.call_function = call_function


class OutOfRange:
    """A Number box's value outside its bounds, handed on by keep_out_of_range for the guard to refuse."""

    def __init__(self, value, minimum, maximum):
        self.value, self.minimum, self.maximum = value, minimum, maximum

    def sentence(self, t: Translator, label: str) -> str:
        if self.minimum is not None and self.value < self.minimum:
            return t("form.greater_than_equal", label=label, ge=self.minimum, got=self.value)
        return t("form.less_than_equal", label=label, le=self.maximum, got=self.value)


def keep_out_of_range(number_class) -> None:
    """Gradio's Number refuses an out-of-range value while preprocessing, before any handler (or the guard) runs:
    "Value 0 is less than minimum value 1." naming no box, and a bare "Error" badge on every output of the event.
    Number boxes hand such a value on as OutOfRange instead; their minimum and maximum still steer the page's
    spinner. Patched on the class, not per box: Gradio makes a session's own copy of a box whose properties an
    event changed (visible=...), and the copy would refuse again. This process serves only this app."""
    if getattr(number_class.preprocess, "keeps_out_of_range", False):
        return
    preprocess = number_class.preprocess

    def lenient(self, payload):
        lo, hi = self.minimum, self.maximum
        if isinstance(payload, (int, float)) and ((lo is not None and payload < lo) or (hi is not None and payload > hi)):
            return OutOfRange(payload, lo, hi)
        return preprocess(self, payload)

    setattr(lenient, "keeps_out_of_range", True)  # (a function attribute mypy's Callable type does not have)
    number_class.preprocess = lenient


def refusal_prediction(blocks, fn, text: str, event_id: str | None):
    """The outputs of event `fn` when it is refused before its handler runs: `text` in its message area (the
    Markdown output whose elem_id says message, else its first Markdown), every other output unchanged. An event
    without a Markdown output shows `text` as a warning notice (no output changes); called outside the queue (no
    page to show a notice on) it raises gr.Error."""
    import gradio as gr

    outputs = list(fn.outputs)
    markdowns = [c for c in outputs if isinstance(c, gr.Markdown)]
    target = next((c for c in markdowns if "message" in (c.elem_id or "")), markdowns[0] if markdowns else None)
    if target is None:
        if event_id is None or blocks._queue is None:
            raise gr.Error(text, print_exception=False)
        blocks._queue.log_message(event_id=event_id, log=text, title="", level="warning", duration=None, visible=True)
    values = [f"✗ {text}" if c is target else gr.skip() for c in outputs]
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def create_app(options: ServeOptions, *, temp_dir: Path):
    """The FastAPI app serving the GUI. Call server.neutralise_gradio_env() before this (it imports gradio)."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from loratrainer.config import MAX_CONFIG_BYTES
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs
    from loratrainer.gui.page_language import PageLanguage
    from loratrainer.gui.upload_route import add_upload_route
    from loratrainer.gui.web_guards import LoginPageScrub, LoginThrottle, OriginGuard, UploadLimit

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    jobs = Jobs(options.state_dir or Path.home() / ".cache" / "loratrainer")
    display = Display(temp_dir / "display")
    add_upload_route(app, jobs.state_dir, options.max_upload_mb)  # Dataset > Prepare folders' uploads (its own limits), before the pages
    languages = [options.language] if options.language else list(LANGUAGES)
    for lang in languages:
        other = None if options.language else f"/{'ko' if lang == 'en' else 'en'}/"
        blocks = build_blocks(lang, jobs, display, other_language_url=other, browse_limited=not is_loopback(options.host),
                              browse_folders=options.browse_roots)
        gr.mount_gradio_app(
            app,
            blocks,
            path="/" if options.language else f"/{lang}",
            server_name=options.host,
            server_port=options.port,
            auth=options.auth,
            footer_links=["api"],
            run_history=False,
            allowed_paths=[],  # the file route serves only Gradio's own files and what the app made for display
            max_file_size=MAX_CONFIG_BYTES,  # the only upload is a config file
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            css=CSS,
            theme=_theme(),
        )
    if not options.language:

        async def redirect(request):
            lang = pick_language(request.headers.get("accept-language"))
            return RedirectResponse(f"/{lang}/", status_code=307)

        app.add_route("/", redirect, methods=["GET", "HEAD"], include_in_schema=False)
    # the last added runs first: Host check, Origin check, upload size, login throttle, login page, file route
    app.add_middleware(FileRouteGuard)
    app.add_middleware(PageLanguage, language_of=lambda path: options.language or next(
        (lang for lang in LANGUAGES if path == f"/{lang}/" or path == f"/{lang}"), None))
    app.add_middleware(LoginPageScrub)
    app.add_middleware(LoginThrottle, message=lambda path: Translator("ko" if path.startswith("/ko/") or options.language == "ko" else "en")("error.login_throttled"))
    app.add_middleware(UploadLimit)
    app.add_middleware(OriginGuard)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(options))
    return app


def _theme():
    """Gradio's default look with local fonts: the page makes no request outside this machine."""
    import gradio as gr

    return gr.themes.Default(
        font=["system-ui", "Segoe UI", "Noto Sans KR", "Malgun Gothic", "sans-serif"],
        font_mono=["ui-monospace", "Consolas", "monospace"],
    )


class FileRouteGuard:
    """Refuse `/gradio_api/file=<http(s) URL>` and its legacy twin `/gradio_api/file/<URL>`: Gradio would fetch the
    URL server-side; we serve only files we made."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            target = None
            for marker in ("/file=", "/gradio_api/file/"):
                if marker in path:
                    target = path.split(marker, 1)[1].lower()
            if target is not None and target.startswith(("http:", "https:", "//")):
                await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"File not allowed."})
                return
        await self.app(scope, receive, send)
