"""The Windows check that runs without Windows: mypy with `--platform win32` over the launcher, the GUI, the CLI,
the LoRA tools, the process helper (machine/child_processes.py) and scripts/bootstrap.py. typeshed declares os.killpg, os.getpgid, signal.SIGKILL, signal.SIGHUP,
fcntl, os.pathconf, os.sched_getaffinity... for POSIX only, and mypy narrows on `sys.platform` checks (not on
`os.name`), so a POSIX-only call outside a `sys.platform` branch is an error on win32 and not on linux.

What is asserted is that difference: the errors mypy reports for win32 and not for linux (the platform errors).
The package is not yet clean under mypy's general checks (Optional handling, annotations); those errors are the
same on both platforms and are not this test's business. The configuration is pyproject.toml's [tool.mypy]; the
cache lives under .pytest_cache, so a second run takes about a second per platform."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is in the test extras (pip install -e .[test])")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["loratrainer.launch", "loratrainer.gui", "loratrainer.cli", "loratrainer.tools"]  # child_processes is launch's
_ERROR = re.compile(r"^(?P<where>[^:]+:\d+): error: (?P<what>.*)$")


def _mypy(platform: str, targets: list[str], cwd: Path = ROOT) -> tuple[set[str], str]:
    cache = ROOT / ".pytest_cache" / f"mypy-{platform}"
    out, err, _ = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--platform", platform,
                           "--cache-dir", str(cache), "--no-error-summary", "--show-error-codes", *targets])
    assert "error: " not in err, err  # mypy itself failed (a bad option, a crash)
    return {line for line in out.splitlines() if _ERROR.match(line)}, out


def _platform_errors(targets: list[str]) -> list[str]:
    windows, _ = _mypy("win32", targets)
    linux, _ = _mypy("linux", targets)
    return sorted(windows - linux)


def _package_args() -> list[str]:
    # and the installer gui.bat runs on Windows itself
    folders = [str(ROOT.joinpath(*package.split("."))) for package in PACKAGES]  # mypy takes packages or files, not both
    return folders + [str(ROOT / "scripts" / "bootstrap.py")]


def test_the_launcher_gui_cli_and_tools_type_check_for_windows():
    assert _platform_errors(_package_args()) == []


SNIPPET = '''
import os
import signal
import sys


def end(pid: int) -> None:
    os.killpg(os.getpgid(pid), signal.SIGKILL)


def end_guarded(pid: int) -> None:
    if sys.platform != "win32":
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def end_by_os_name(pid: int) -> None:
    if os.name == "posix":  # not a branch mypy understands: still an error on win32
        os.kill(pid, signal.SIGKILL)
'''


def test_a_posix_only_call_outside_a_platform_branch_fails_the_check(tmp_path):
    module = tmp_path / "posix_only.py"
    module.write_text(textwrap.dedent(SNIPPET), encoding="utf-8")
    errors = _platform_errors([str(module)])
    lines = sorted({int(_ERROR.match(e)["where"].rsplit(":", 1)[1]) for e in errors})
    text = "\n".join(errors)
    assert lines == [8, 18], text  # `end` and the os.name branch; never the sys.platform branch (line 13)
    assert 'has no attribute "killpg"' in text and 'has no attribute "getpgid"' in text and '"SIGKILL"' in text
