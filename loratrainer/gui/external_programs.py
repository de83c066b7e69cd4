"""The Results tab's two doors out: TensorBoard on a run's log folder (loopback only) and the output folder in
the desktop's file manager. Processes are started from argument lists, never through a shell."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from loratrainer.machine import child_processes
from loratrainer.messages import Msg, define

define({
    "tensorboard.exited": "TensorBoard exited with code {exit_code}",
    "tensorboard.no_answer": "TensorBoard did not answer",
})


class TensorBoardFailed(RuntimeError):
    """TensorBoard did not start; `msg` says why in the page's language."""

    def __init__(self, msg: Msg):
        super().__init__(str(msg))
        self.msg = msg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoards:
    """One TensorBoard per log folder, started on demand on 127.0.0.1, ended with the GUI (their own sessions
    are killed by `close`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.running: dict[Path, tuple[subprocess.Popen, str]] = {}

    def available(self) -> bool:
        try:
            import importlib.util

            return importlib.util.find_spec("tensorboard") is not None
        except (ImportError, ValueError):
            return False

    def url_for(self, logdir: Path, timeout: float = 30) -> str:
        """Start (or reuse) TensorBoard on `logdir`; its URL once it answers. RuntimeError when it does not."""
        logdir = Path(logdir)
        with self._lock:
            known = self.running.get(logdir)
            if known and known[0].poll() is None:
                return known[1]
            port = _free_port()
            argv = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
            popen = child_processes.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}/"
            self.running[logdir] = (popen, url)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if popen.poll() is not None:
                raise TensorBoardFailed(Msg.of("tensorboard.exited", exit_code=popen.returncode))
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return url
            except OSError:
                time.sleep(0.3)
        raise TensorBoardFailed(Msg.of("tensorboard.no_answer"))

    def close(self) -> None:
        with self._lock:
            for popen, _ in self.running.values():
                child_processes.stop(popen, term_grace_s=5)
            self.running.clear()


def open_folder(folder: Path) -> bool:
    """Open `folder` in the desktop's file manager; False where there is none (a server, a container)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    try:
        if sys.platform == "win32":
            os.startfile(str(folder))
            return True
        opener = "open" if sys.platform == "darwin" else "xdg-open"
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin"):
            return False
        child_processes.start([opener, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
        return True
    except OSError:
        return False
