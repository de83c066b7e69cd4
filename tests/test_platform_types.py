"""The type check, run by the suite: mypy over the whole package and scripts/bootstrap.py, for Linux, Windows
(`--platform win32`) and macOS (`--platform darwin`), with pyproject.toml's [tool.mypy]. Any error fails.

The Windows run is the check that runs without Windows: typeshed declares os.killpg, os.getpgid, os.pread,
signal.SIGKILL, signal.SIGHUP, fcntl, os.pathconf, os.sched_getaffinity... for POSIX only, and mypy narrows on
`sys.platform` checks (not on `os.name`), so a POSIX-only call outside a `sys.platform` branch is an error on win32
and not on linux (the last test shows it). The cache lives under .pytest_cache (ignored by git): a clean clone (as CI
runs) pays a cold check, about 5 s of CPU per platform on an idle machine, the three in parallel processes; with
the cache the file takes about 2 s of CPU in all."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is in the test extras (pip install -e .[test])")

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [str(ROOT / "loratrainer"), str(ROOT / "scripts" / "bootstrap.py")]  # and the installer gui.bat runs
PLATFORMS = ["linux", "win32", "darwin"]
_ERROR = re.compile(r"^(?P<where>[^:]+:\d+): error: (?P<what>.*)$")


def _options(platform: str) -> list[str]:
    return ["--config-file", str(ROOT / "pyproject.toml"), "--platform", platform,
            "--cache-dir", str(ROOT / ".pytest_cache" / f"mypy-{platform}"), "--no-error-summary", "--show-error-codes"]


def _mypy(platform: str, targets: list[str]) -> tuple[set[str], str]:
    out, err, _ = api.run([*_options(platform), *targets])
    assert "error: " not in err, err  # mypy itself failed (a bad option, a crash)
    return {line for line in out.splitlines() if _ERROR.match(line)}, out


@pytest.fixture(scope="module")
def package_check() -> dict[str, tuple[int, str]]:
    """The three platforms' checks of the package at once, each in its own process: a cold check uses both cores,
    and a mypy process took a third less CPU than mypy.api inside pytest's (29 s against 38 s for the three)."""
    runs = {p: subprocess.Popen([sys.executable, "-m", "mypy", *_options(p), *TARGETS], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for p in PLATFORMS}
    out = {}
    for platform, proc in runs.items():  # (the others go on meanwhile; their output waits in their pipes)
        text, _ = proc.communicate(timeout=600)
        out[platform] = (proc.returncode, text)
    return out


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_package_type_checks(package_check, platform):
    code, out = package_check[platform]
    assert code == 0 and not any(_ERROR.match(line) for line in out.splitlines()), f"mypy --platform {platform}:\n{out}"


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
