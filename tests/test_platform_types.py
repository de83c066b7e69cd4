"""The type check, run by the suite: mypy over the whole package and scripts/bootstrap.py, for Linux, Windows
(`--platform win32`) and macOS (`--platform darwin`), with pyproject.toml's [tool.mypy]. Any error fails.

The Windows run is the check that runs without Windows: typeshed declares os.killpg, os.getpgid, os.pread,
signal.SIGKILL, signal.SIGHUP, fcntl, os.pathconf, os.sched_getaffinity... for POSIX only, and mypy narrows on
`sys.platform` checks (not on `os.name`), so a POSIX-only call outside a `sys.platform` branch is an error on win32
and not on linux (the second test shows it). The cache lives under .pytest_cache (ignored by git): a clean clone
pays the cold run once per platform (about 5 s each here), later runs take about a second each."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is in the test extras (pip install -e .[test])")

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [str(ROOT / "loratrainer"), str(ROOT / "scripts" / "bootstrap.py")]  # and the installer gui.bat runs
_ERROR = re.compile(r"^(?P<where>[^:]+:\d+): error: (?P<what>.*)$")


def _mypy(platform: str, targets: list[str]) -> tuple[set[str], str]:
    cache = ROOT / ".pytest_cache" / f"mypy-{platform}"
    out, err, _ = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--platform", platform,
                           "--cache-dir", str(cache), "--no-error-summary", "--show-error-codes", *targets])
    assert "error: " not in err, err  # mypy itself failed (a bad option, a crash)
    return {line for line in out.splitlines() if _ERROR.match(line)}, out


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_the_package_type_checks(platform):
    errors, out = _mypy(platform, TARGETS)
    assert not errors, f"mypy --platform {platform}:\n{out}"


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
    linux, _ = _mypy("linux", [str(module)])
    windows, _ = _mypy("win32", [str(module)])
    assert linux == set()
    lines = sorted({int(_ERROR.match(e)["where"].rsplit(":", 1)[1]) for e in windows})
    text = "\n".join(sorted(windows))
    assert lines == [8, 18], text  # `end` and the os.name branch; never the sys.platform branch (line 13)
    assert 'has no attribute "killpg"' in text and 'has no attribute "getpgid"' in text and '"SIGKILL"' in text
