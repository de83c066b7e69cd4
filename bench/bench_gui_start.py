"""How fast the GUI appears: seconds from `loratrainer gui --no-browser` to the page answering, and the import
time of the GUI module (gradio included). Not part of the test suite.

    .venv/bin/python bench/bench_gui_start.py [--runs 3] [--language en]

Prints one line per run and the medians; also checks that torch and diffusers were not imported at start.
Target (docs/user-guide.md): the page answers within 5 s of the command.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_page(language: str | None) -> float:
    port = free_port()
    args = [sys.executable, "-m", "loratrainer", "gui", "--no-browser", "--port", str(port)]
    if language:
        args += ["--language", language]
    env = {**os.environ, "HOME": tempfile.mkdtemp(prefix="bench-gui-home-")}
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200 and b"gradio" in r.read(20000).lower():
                        return time.perf_counter() - start
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"the GUI exited with {proc.returncode}")
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def import_time() -> tuple[float, list[str]]:
    code = (
        "import time, sys; t = time.perf_counter(); import loratrainer.gui.app, gradio; "
        "print(time.perf_counter() - t); print(','.join(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    return float(out[0]), [m for m in out[1].split(",") if m]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--language", choices=["en", "ko"], help="serve one language (default: both, as users start it)")
    args = parser.parse_args()
    imports = []
    for i in range(args.runs):
        seconds, heavy = import_time()
        imports.append(seconds)
        print(f"import loratrainer.gui.app + gradio, run {i + 1}: {seconds:.2f} s; heavy modules loaded: {heavy or 'none'}")
    pages = []
    for i in range(args.runs):
        seconds = time_to_page(args.language)
        pages.append(seconds)
        print(f"`loratrainer gui --no-browser` to page answering, run {i + 1}: {seconds:.2f} s")
    print(f"median import: {statistics.median(imports):.2f} s; median time to page: {statistics.median(pages):.2f} s (target 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
