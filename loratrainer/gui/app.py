"""The GUI application: one Gradio Blocks per language, mounted in a FastAPI app that checks the Host header.

Tabs follow the order of the work (Dataset, Training, Results, Utilities), one module each. This module only
assembles them; it starts processes through jobs.py and never trains.

Languages: with `--language` one Blocks in that language is served at `/`. Otherwise both are served, at
`/en/` and `/ko/` (the machine's locale language built at start, the other at its first request: later_language.py),
and `/` redirects by the browser's Accept-Language (the browser derives it from
navigator.language), so every label, help text and message of a page is in one language, server-side.
"""

from __future__ import annotations

from pathlib import Path

from loratrainer.gui import gradio_adapter
from loratrainer.gui.form import bounds_problem
from loratrainer.gui.i18n import LANGUAGES, Translator, pick_language
from loratrainer.gui.later_language import PAGE_BUILDS, LaterLanguageRoute, LaterLanguages, locale_language
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
    gradio_adapter.quiet_queue(blocks)
    guard_text_inputs(blocks, t)
    return blocks, ui


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
    MAX_LINE_BYTES, or a number outside its box's minimum/maximum (form.number_box), with one sentence naming the
    box as the page labels it. Without this, eight handlers showed
    `embedded null byte` or `[Errno 36] File name too long` tracebacks (docs/reliability.md, "Paths").
    A setting's number box has no bounds here: the handler reads it through the schema, which names it.

    The sentence goes where the event's own answers go (its message area, see refusal_prediction) and nothing else
    changes. Raising gr.Error instead would put a bare red "Error" badge on every output of the event."""
    import gradio as gr

    def check(inputs, values, outputs, event_id):
        for component, value in zip(inputs, values):
            label = getattr(component, "label", None) or getattr(component, "elem_id", None) or "?"
            text = bounds_problem(component, value, t, label)
            if text is None:
                one_line = isinstance(component, gr.Textbox) and (component.max_lines or component.lines or 1) <= 1
                problem = text_problem(value, one_line)
                text = t(f"error.text_{problem}", label=label, limit=MAX_LINE_BYTES) if problem else None
            if text:
                return refusal_prediction(blocks, outputs, text, event_id)
        return gradio_adapter.NOT_REFUSED

    gradio_adapter.check_before_handlers(blocks, check, around=PAGE_BUILDS.handler)


def refusal_prediction(blocks, outputs: list, text: str, event_id: str | None):
    """The `outputs` of an event when it is refused before its handler runs: `text` in its message area (the
    Markdown output whose elem_id says message, else its first Markdown), every other output unchanged. An event
    without a Markdown output shows `text` as a warning notice (no output changes); called outside the queue (no
    page to show a notice on) it raises gr.Error."""
    import gradio as gr

    markdowns = [c for c in outputs if isinstance(c, gr.Markdown)]
    target = next((c for c in markdowns if "message" in (c.elem_id or "")), markdowns[0] if markdowns else None)
    if target is None and not gradio_adapter.show_warning(blocks, event_id, text):
        raise gr.Error(text, print_exception=False)
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

    def mount(target, lang: str):
        other = None if options.language else f"/{'ko' if lang == 'en' else 'en'}/"
        blocks = build_blocks(lang, jobs, display, other_language_url=other, browse_limited=not is_loopback(options.host),
                              browse_folders=options.browse_roots)
        gr.mount_gradio_app(
            target,
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
        return target

    # the language the user most likely reads is built now, the other at its first request (later_language.py)
    first = options.language or locale_language()
    later = LaterLanguages(lambda lang: mount(FastAPI(docs_url=None, redoc_url=None, openapi_url=None), lang),
                           [] if options.language else [lang for lang in LANGUAGES if lang != first])
    # Dataset > Prepare folders' uploads (their own limits), registered before the pages (one at `/` takes every
    # path); an upload needs the login of a page built so far (the first language's, or a later one once opened)
    built = lambda: gradio_adapter.mounted_pages(app) + [(f"/{lang}", page) for lang, page in later.apps.items()]
    add_upload_route(app, jobs.state_dir, options.max_upload_mb, pages=built)
    mount(app, first)
    if not options.language:

        async def redirect(request):
            lang = pick_language(request.headers.get("accept-language"))
            return RedirectResponse(f"/{lang}/", status_code=307)

        app.add_route("/", redirect, methods=["GET", "HEAD"], include_in_schema=False)
    # the last added runs first: Host check, Origin check, upload size, login throttle, login page, file route,
    # the later language's page
    app.add_middleware(LaterLanguageRoute, later=later)
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
    """Refuse a URL asked of Gradio's file route (gradio_adapter.file_route_fetches_url): Gradio would fetch the
    URL server-side; we serve only files we made."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            if gradio_adapter.file_route_fetches_url(scope.get("path", "")):
                await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"File not allowed."})
                return
        await self.app(scope, receive, send)
