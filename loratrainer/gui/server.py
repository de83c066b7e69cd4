"""Serving the GUI: 127.0.0.1:7860 by default, never a share link, only the served host names.

The Blocks are mounted into our own FastAPI app (app.py) and served by uvicorn directly, so Gradio's
`launch()` (which reads GRADIO_SHARE, GRADIO_SERVER_NAME, ... and may open a share tunnel) never runs; the
GRADIO_* environment variables are removed as well, before gradio is imported, so that none of them can
change what is served or where (docs/reliability.md, "The web interface").
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# Gradio settings we set ourselves; every other GRADIO_* variable is dropped.
_GRADIO_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SSR_MODE": "False", "GRADIO_MCP_SERVER": "False"}


@dataclass(frozen=True)
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    open_browser: bool = True
    username: str | None = None
    password: str | None = None
    language: str | None = None  # None = follow the browser
    state_dir: Path | None = None  # where the GUI remembers its runs; None = ~/.cache/loratrainer
    # with --listen: the names the browser uses for this machine that it does not know itself (a rented box's
    # public address behind NAT, a container's host, a provider's proxy name); docs/remote.md
    public_names: tuple[str, ...] = ()
    browse_roots: tuple[str, ...] = ()  # --browse-root: folders the file browser may show under --listen (with home)
    forwarded_allow_ips: str | None = None  # --forwarded-allow-ips: proxies whose X-Forwarded-For is believed
    max_upload_mb: int | None = None  # --max-upload-mb: Dataset > Prepare folders' upload limit (None: upload_route's default)

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username and self.password else None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        if ":" in host:  # an IPv6 address is bracketed in a URL (RFC 3986): http://[::1]:7860/
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


define({
    "serve.listen_needs_login": "--listen {host} makes the GUI reachable from other machines: give --username and --password as well (or leave out --listen to stay on 127.0.0.1)",
    "serve.login_pair": "give both --username and --password, or neither",
    "serve.port": "--port {port}: choose a port between 1 and 65535",
    "serve.public_name_loopback": "--public-name is for --listen: on 127.0.0.1 the page is reached as 127.0.0.1 or localhost",
    "serve.public_name": "--public-name {name!r}: give a host name or an address, without a port or a scheme",
    "serve.cannot_listen": "cannot listen on {host}:{port} ({reason}): is another GUI running? Try --port {next_port}",
})


def validate(options: ServeOptions) -> None:
    """Anything but loopback is reachable by others: it needs a user name and password."""
    if not is_loopback(options.host) and not options.auth:
        raise UserError(Msg.of("serve.listen_needs_login", host=options.host))
    if (options.username is None) != (options.password is None):
        raise UserError(Msg.of("serve.login_pair"))
    if not 0 < options.port < 65536:
        raise UserError(Msg.of("serve.port", port=options.port))
    if options.public_names and is_loopback(options.host):
        raise UserError(Msg.of("serve.public_name_loopback"))
    for name in options.public_names:
        if not name or any(c in name for c in "/*:@ ") and not _is_ip(name):
            raise UserError(Msg.of("serve.public_name", name=name))


def allowed_hosts(options: ServeOptions) -> list[str]:
    """Host header values the app answers to: the served address (and loopback names when on loopback).

    Anything else (a DNS-rebinding page's `Host: evil.example`) gets 400 from TrustedHostMiddleware.
    """
    hosts = {options.host}
    if is_loopback(options.host) or options.host in ("0.0.0.0", "::"):
        hosts |= {"127.0.0.1", "localhost", "[::1]"}
    if not is_loopback(options.host):  # the names other machines use for this one
        name = socket.gethostname()
        hosts |= {name, socket.getfqdn()}
    if not is_loopback(options.host):
        hosts |= set(options.public_names)
    if options.host in ("0.0.0.0", "::"):  # every address of this machine
        try:
            hosts |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}  # (an int only for AF_CAN)
        except OSError:
            pass
        hosts |= _primary_addresses()
    return sorted(h for h in hosts if h)


def _primary_addresses() -> set[str]:
    """The address this machine uses on its network (a UDP 'connect' sends nothing; it only picks a route)."""
    found = set()
    for family, probe in ((socket.AF_INET, ("10.254.254.254", 1)), (socket.AF_INET6, ("fd00::1", 1))):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(probe)
                found.add(s.getsockname()[0])
        except OSError:
            continue
    return found


def neutralise_gradio_env(environ: dict | None = None) -> Path:
    """Drop every GRADIO_* variable (GRADIO_SHARE, GRADIO_SERVER_NAME, GRADIO_ALLOWED_PATHS, ...), set ours,
    and give Gradio a private temporary folder: the only place its file route serves from besides its own assets."""
    env = os.environ if environ is None else environ
    for key in [k for k in env if k.startswith("GRADIO_")]:
        del env[key]
    env.update(_GRADIO_ENV)
    temp = Path(tempfile.mkdtemp(prefix="loratrainer-gui-"))
    env["GRADIO_TEMP_DIR"] = str(temp)
    # Gradio's file route also serves its examples cache, by default `.gradio/cached_examples` in the working
    # directory (where another Gradio app, such as the Kohya GUI, may have cached files): keep it in our folder.
    env["GRADIO_EXAMPLES_CACHE"] = str(temp / "examples-cache")
    return temp


def serve(options: ServeOptions, create_app: Callable[..., Any]) -> int:
    """Serve `create_app(options, temp_dir=...)` (gui.app.create_app, handed in by the CLI so that this module,
    which the app imports, does not import the app back)."""
    validate(options)
    temp = neutralise_gradio_env()
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the SIGTERM it shut down for once it is done; by default that would end the process
        # before the finally below removes the temporary folder
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _serve(options, temp, create_app)
    finally:
        # uploads and display copies live here: nothing of a session outlives the GUI (also after a failed start)
        shutil.rmtree(temp, ignore_errors=True)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def without_gc(build: Callable[[], Any]) -> Any:
    """`build()` with Python's cycle collector paused: importing Gradio and building the pages makes about two
    million objects, few of them garbage, and the collector kept scanning them (about a tenth of the GUI's start,
    bench/bench_gui_start.py). It runs again afterwards, also when the build fails."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return build()
    finally:
        if was_enabled:
            gc.enable()


def _serve(options: ServeOptions, temp: Path, create_app: Callable[..., Any]) -> int:
    import uvicorn

    stopping = _Stopping(without_gc(lambda: create_app(options, temp_dir=temp)))
    # A browser tab or a gradio_client keeps a stream open: _Stopping ends those at Ctrl+C, the timeout is the backstop.
    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, so a local client rotating that header was never
    # throttled at login (docs/reliability.md row 50): forwarded headers count only from proxies named at start
    config = uvicorn.Config(stopping, host=options.host, port=options.port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                            proxy_headers=bool(options.forwarded_allow_ips), forwarded_allow_ips=options.forwarded_allow_ips or "")
    server = _new_server(config, stopping)
    try:
        sock = _bind(options)
    except OSError as exc:
        raise UserError(Msg.of("serve.cannot_listen", host=options.host, port=options.port, reason=exc.strerror,
                               next_port=options.port + 1)) from None
    print(f"loratrainer GUI: {options.url}  (Ctrl+C to quit)", flush=True)
    if options.open_browser:
        threading.Thread(target=_open_when_ready, args=(server, options.url), daemon=True).start()
    server.run(sockets=[sock])
    return 0


class _Stopping:
    """Ends open streams when the server stops: to a request still listening (Gradio's event streams, a browser's
    heartbeat), `receive()` answers `http.disconnect` at once, so its handler returns instead of being cancelled
    after the graceful-shutdown timeout with a CancelledError traceback (docs/reliability.md, "The web interface")."""

    def __init__(self, app):
        self.app = app
        self.loop = None
        self.event = None

    def stop(self) -> None:
        if self.loop is not None and self.event is not None:
            self.loop.call_soon_threadsafe(self.event.set)

    async def __call__(self, scope, receive, send):
        import asyncio

        if self.event is None:
            self.loop, self.event = asyncio.get_running_loop(), asyncio.Event()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        event = self.event

        async def until_stopped():
            if event.is_set():
                return {"type": "http.disconnect"}
            got = asyncio.ensure_future(receive())
            stop = asyncio.ensure_future(event.wait())
            done, _ = await asyncio.wait({got, stop}, return_when=asyncio.FIRST_COMPLETED)
            if got in done:
                stop.cancel()
                return got.result()
            got.cancel()
            return {"type": "http.disconnect"}

        await self.app(scope, until_stopped, send)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def __init__(self, config, stopping: _Stopping):
            super().__init__(config)
            self.stopping = stopping

        def handle_exit(self, sig, frame) -> None:
            self.stopping.stop()
            super().handle_exit(sig, frame)

    return Server


def _new_server(config, stopping: _Stopping):
    return _server_class()(config, stopping)


def _bind(options: ServeOptions) -> socket.socket:
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "posix":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.host, options.port))
    sock.set_inheritable(True)
    return sock


def _open_when_ready(server, url: str) -> None:
    for _ in range(600):
        if server.started:
            webbrowser.open(url)
            return
        time.sleep(0.05)
