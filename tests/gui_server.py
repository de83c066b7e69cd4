"""The real GUI as users start it: `python -m loratrainer gui` on a free loopback port, for the tests that need
a live server (gradio_client, Host and share checks, the browser test)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gui(*args: str, env: dict[str, str], log: Path, timeout: float = 90, host: str = "127.0.0.1") -> tuple[subprocess.Popen, str]:
    """Start the GUI with `args`, its output going to `log`; return (process, url) once the page at `host` answers
    200 (401 counts when the GUI asks for a login).

    A GUI that exits or does not answer within `timeout` fails the test with its log.
    """
    port = free_port()
    with open(log, "w") as out:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, "-m", "loratrainer", "gui", "--no-browser", "--port", str(port), *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("the GUI did not start:\n" + log.read_text())
        time.sleep(0.2)


def stop_gui(proc: subprocess.Popen, timeout: float = 20) -> bool:
    """SIGTERM, as Ctrl+C in a terminal would; True when it ended within `timeout` (else it is killed)."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
