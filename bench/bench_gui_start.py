"""How fast the GUI appears: seconds from `loratrainer gui --no-browser` to the page answering, the import
time of the GUI module (gradio included), and where the time goes (importing gradio, building the app, the first
answer). Not part of the test suite.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_gui_start.py [--runs 5] [--language en] [--compare OTHER_TREE]

Prints one line per run, min and median, and the load average before and after (the machine may be shared);
`--compare DIR` alternates each run with the same command in another checkout (e.g. `git archive` of an older
commit), so both are measured under the same load. Also checks that torch and diffusers were not imported at start.
Target: the page answers within 3 s of the command on an idle machine (issue 25; docs/user-guide.md says 5 s).
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

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_page(language: str | None, root: Path = ROOT) -> tuple[float, float]:
    """Seconds from the command to the page answering, and the CPU seconds the GUI process used until then (on a
    busy machine the first grows with the load, the second hardly: it stands for the time on an idle machine)."""
    port = free_port()
    args = [sys.executable, "-m", "loratrainer", "gui", "--no-browser", "--port", str(port)]
    if language:
        args += ["--language", language]
    env = {**os.environ, "HOME": tempfile.mkdtemp(prefix="bench-gui-home-"), "PYTHONPATH": str(root)}
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200 and b"gradio" in r.read(20000).lower():
                        seconds = time.perf_counter() - start
                        cpu = psutil.Process(proc.pid).cpu_times()
                        return seconds, cpu.user + cpu.system
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"the GUI exited with {proc.returncode}")
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def import_time(root: Path = ROOT) -> tuple[float, list[str]]:
    code = (
        "import time, sys; t = time.perf_counter(); import loratrainer.gui.app, gradio; "
        "print(time.perf_counter() - t); print(','.join(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return float(out[0]), [m for m in out[1].split(",") if m]


BREAKDOWN = """
import sys, tempfile, time
from pathlib import Path
t0 = time.perf_counter()
from loratrainer.gui.server import ServeOptions, neutralise_gradio_env
temp = neutralise_gradio_env()
import gradio
t1 = time.perf_counter()
from loratrainer.gui.app import create_app
from starlette.testclient import TestClient
language = sys.argv[1] or None
app = create_app(ServeOptions(open_browser=False, language=language, state_dir=Path(tempfile.mkdtemp())), temp_dir=temp)
t2 = time.perf_counter()
with TestClient(app, base_url="http://127.0.0.1:7860") as client:
    t3 = time.perf_counter()
    assert client.get("/").status_code == 200
    t4 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2:.2f} {t4 - t3:.2f}")
"""


def breakdown(language: str | None, root: Path = ROOT) -> list[float]:
    """Seconds to import gradio, to build the app (create_app), to start it (lifespan) and to answer `/`."""
    out = subprocess.run([sys.executable, "-c", BREAKDOWN, language or ""], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, check=True).stdout.split()
    return [float(x) for x in out]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stats(values: list[float]) -> str:
    return f"min {min(values):.2f} s, median {statistics.median(values):.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--language", choices=["en", "ko"], help="serve one language (default: both, as users start it)")
    parser.add_argument("--compare", type=Path, metavar="DIR", help="another checkout, measured in turn with this one")
    parser.add_argument("--pages-only", action="store_true", help="only the time to the page (no import times, no breakdown)")
    args = parser.parse_args()
    trees = {"this": ROOT} if args.compare is None else {"this": ROOT, "other": args.compare.resolve()}
    print(f"load average before: {load()}")
    imports: dict[str, list[float]] = {name: [] for name in trees}
    parts: dict[str, list[list[float]]] = {name: [] for name in trees}
    pages: dict[str, list[float]] = {name: [] for name in trees}
    cpus: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(0 if args.pages_only else args.runs):
        for name, root in trees.items():
            seconds, heavy = import_time(root)
            imports[name].append(seconds)
            print(f"[{name}] import loratrainer.gui.app + gradio, run {i + 1}: {seconds:.2f} s; heavy modules loaded: {heavy or 'none'}")
    for i in range(0 if args.pages_only else args.runs):
        for name, root in trees.items():
            parts[name].append(breakdown(args.language, root))
            print(f"[{name}] run {i + 1}: import gradio, create_app, start, answer /: " + ", ".join(f"{x:.2f}" for x in parts[name][-1]))
    for i in range(args.runs):
        for name, root in trees.items():
            seconds, cpu = time_to_page(args.language, root)
            pages[name].append(seconds)
            cpus[name].append(cpu)
            print(f"[{name}] `loratrainer gui --no-browser` to page answering, run {i + 1}: {seconds:.2f} s ({cpu:.2f} s of CPU)")
    for name in trees:
        if not args.pages_only:
            columns = list(zip(*parts[name]))
            print(f"[{name}] import: {stats(imports[name])}; create_app: {stats(list(columns[1]))}")
        print(f"[{name}] time to page: {stats(pages[name])} (target 3 s); its CPU time: {stats(cpus[name])}")
    print(f"load average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
