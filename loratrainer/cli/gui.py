"""`loratrainer gui`: the web interface on http://127.0.0.1:7860 (gradio is imported only when it runs)."""

from __future__ import annotations

import argparse
import os
import sys

from loratrainer.messages import Msg, define

define({"cli.gui.stopped": "stopped"})


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "gui",
        help="start the web interface (http://127.0.0.1:7860) and open the browser",
        description="Start the web interface. It listens on 127.0.0.1 only, unless --listen is given "
        "(which then requires --username and --password). There is never a public share link.",
    )
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    p.add_argument("--listen", metavar="ADDR", default="127.0.0.1", help="address to listen on; anything but loopback needs --username and --password")
    p.add_argument("--username", help="user name required to open the page")
    p.add_argument("--password", help="password required to open the page (or set LORATRAINER_GUI_PASSWORD, which `ps` does not show)")
    p.add_argument("--public-name", action="append", default=[], metavar="NAME",
                   help="with --listen: a name or address the browser uses for this machine that it does not know itself "
                   "(a public address behind NAT, a container's host); repeatable, or LORATRAINER_GUI_PUBLIC_NAMES=a,b "
                   "(docs/remote.md)")
    p.add_argument("--language", choices=["en", "ko"], help="force the page language (default: follow the browser)")
    p.add_argument("--browse-root", dest="browse_roots", action="append", default=[], metavar="DIR",
                   help="with --listen: a folder the in-page file browser may show besides your home folder (repeatable)")
    p.add_argument("--forwarded-allow-ips", metavar="IPS",
                   help="behind a reverse proxy: the proxy addresses whose X-Forwarded-For header is believed (default: none)")
    p.add_argument("--max-upload-mb", type=int, metavar="MB",
                   help="the largest dataset (images or one zip) Dataset > Prepare folders accepts from the page, in MB "
                   "(default 2048); the server also needs that much free space in its state folder (docs/remote.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from loratrainer.gui.app import create_app
    from loratrainer.gui.server import ServeOptions, serve

    options = ServeOptions(
        host=args.listen,
        port=args.port,
        open_browser=not args.no_browser,
        username=args.username,
        password=args.password or (os.environ.get("LORATRAINER_GUI_PASSWORD") if args.username else None),
        language=args.language,
        public_names=tuple(args.public_name or public_names_from_env()),
        browse_roots=tuple(args.browse_roots),
        forwarded_allow_ips=args.forwarded_allow_ips,
        max_upload_mb=args.max_upload_mb,
    )
    try:
        return serve(options, create_app)
    except KeyboardInterrupt:
        # Ctrl+C: the server has shut down and removed its temporary folder. The interpreter's own teardown of
        # gradio's objects would add 1-2 s of garbage collection with nothing left to save, so leave now.
        print(Msg.of("cli.gui.stopped"), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)


def public_names_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get("LORATRAINER_GUI_PUBLIC_NAMES", "").split(",") if n.strip()]
