r"""Create or update the project's virtual environment (.venv) so that gui.sh, gui.bat and test.sh just work.

Runs with any Python >= 3.10 and the standard library only. It installs on the first run and again whenever
pyproject.toml (or the requested extras) changed; otherwise it returns in well under a second.

PyTorch is installed first, on its own, because the right build depends on the machine:
- Windows with an NVIDIA GPU: PyPI's Windows wheel is CPU-only, so a CUDA build comes from PyTorch's index.
- everywhere else: pip's ordinary choice (PyPI's Linux wheels include CUDA and also run on the CPU).
- LORATRAINER_TORCH overrides the requirement (e.g. "torch==2.13.0" for a CPU wheel you keep locally), and
  LORATRAINER_TORCH_INDEX the index URL.

Windows' own rules, checked before anything is installed (the functions are pure, tests/test_bootstrap.py):
- the folder may have spaces and non-ASCII letters (C:\Users\김철수\My Files\loratrainer): paths are passed as
  argument lists, never through a shell, and the output is UTF-8 whatever the console's code page;
- a path longer than 260 characters fails inside pip unless Windows' long paths are on: a folder too deep for
  the deepest file the libraries install is refused with the fix, before a half-done install;
- a Python from the Microsoft Store works, but runs in a sandbox that redirects writes under AppData: said once,
  so a failure is not a mystery. (`python` that is only the Store's "install me" shortcut is gui.bat's to catch.)
None of this was run on Windows (README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".loratrainer-installed"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
MIN_PYTHON = (3, 10)
# Windows' MAX_PATH is 260 characters with the terminating NUL. The deepest file our libraries put under
# site-packages is 137 characters (diffusers' .../pipeline_stable_diffusion_attend_and_excite.cpython-311.pyc,
# measured on the installed set); a little more for a longer Python tag.
WINDOWS_MAX_PATH = 259
DEEPEST_INSTALLED = 140
WINDOWS_SITE_PACKAGES = "\\Lib\\site-packages\\"


def venv_python(venv: Path | None = None, windows: bool | None = None) -> Path:
    venv = VENV if venv is None else venv
    windows = os.name == "nt" if windows is None else windows
    return venv / ("Scripts/python.exe" if windows else "bin/python")


def python_problem(version: tuple[int, ...], executable: str) -> str | None:
    """Why this Python cannot make the environment (one sentence), or None."""
    if tuple(version[:2]) < MIN_PYTHON:
        found = ".".join(str(v) for v in version[:3])
        return (f"loratrainer needs Python 3.10 or newer; {executable} is {found}. Install a newer one from "
                "https://www.python.org/downloads/ and run this again.")
    return None


def is_store_python(executable: str) -> bool:
    """A Python installed from the Microsoft Store (it lives under ...\\WindowsApps\\PythonSoftwareFoundation...)."""
    lowered = executable.replace("/", "\\").lower()
    return "\\windowsapps\\" in lowered and "pythonsoftwarefoundation" in lowered


def path_too_long(venv: str, long_paths_enabled: bool) -> str | None:
    """On Windows without long paths: one sentence when the deepest installed file would pass 260 characters."""
    if long_paths_enabled:
        return None
    deepest = len(venv.rstrip("\\/")) + len(WINDOWS_SITE_PACKAGES) + DEEPEST_INSTALLED
    if deepest <= WINDOWS_MAX_PATH:
        return None
    room = WINDOWS_MAX_PATH - len(WINDOWS_SITE_PACKAGES) - DEEPEST_INSTALLED
    return (f"This folder is too deep for Windows' 260-character path limit ({len(venv)} characters before "
            f"the libraries' own {DEEPEST_INSTALLED}): move loratrainer to a shorter folder (at most {room} characters, "
            "e.g. C:\\loratrainer) or turn on long paths (LongPathsEnabled, see "
            "https://learn.microsoft.com/windows/win32/fileio/maximum-file-path-limitation) and run this again.")


def windows_long_paths_enabled() -> bool:
    if sys.platform != "win32":
        return True
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return int(winreg.QueryValueEx(key, "LongPathsEnabled")[0]) == 1
    except OSError:
        return False


def torch_index(env: dict[str, str], windows: bool, nvidia: bool) -> str | None:
    """The index PyTorch comes from: LORATRAINER_TORCH_INDEX, else the CUDA index on Windows with an NVIDIA GPU
    (PyPI's Windows wheel is CPU-only), else PyPI."""
    if "LORATRAINER_TORCH_INDEX" in env:
        return env["LORATRAINER_TORCH_INDEX"] or None
    return CUDA_INDEX if windows and nvidia else None


def wanted_stamp(extras: list[str]) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{digest} extras={','.join(sorted(extras))} python={platform.python_version()}\n"


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pip(*args: str) -> None:
    cmd = [str(venv_python()), "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def torch_installed() -> bool:
    probe = subprocess.run([str(venv_python()), "-c", "import torch"], capture_output=True)
    return probe.returncode == 0


def install_torch() -> None:
    requirement = os.environ.get("LORATRAINER_TORCH", "torch>=2.4")
    windows = os.name == "nt"
    index = torch_index(dict(os.environ), windows, windows and "LORATRAINER_TORCH_INDEX" not in os.environ and has_nvidia_gpu())
    args = ["install", requirement]
    if index:
        args += ["--index-url", index]
    pip(*args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="optional dependency group, e.g. test")
    args = parser.parse_args()
    problem = python_problem(tuple(sys.version_info[:3]), sys.executable)
    if problem is None and os.name == "nt" and not venv_python().exists():
        problem = path_too_long(str(VENV), windows_long_paths_enabled())
    if problem:
        print(problem, file=sys.stderr)
        return 1
    if is_store_python(sys.executable) and not venv_python().exists():
        print("Note: this Python comes from the Microsoft Store, which keeps some of its files in a sandbox. If the "
              "installation fails, install Python from https://www.python.org/downloads/ and run this again.", flush=True)
    if not venv_python().exists():
        print(f"Creating the virtual environment in {VENV} (first run only)...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = wanted_stamp(args.extra)
    if STAMP.exists() and STAMP.read_text(encoding="utf-8") == stamp:
        return 0
    print("Installing loratrainer and its libraries (first run or pyproject.toml changed)...", flush=True)
    if not torch_installed():
        install_torch()
    target = "." + (f"[{','.join(args.extra)}]" if args.extra else "")
    pip("install", "--editable", target)
    STAMP.write_text(stamp, encoding="utf-8")
    return 0


if __name__ == "__main__":
    for stream in (sys.stdout, sys.stderr):  # a redirected console on Windows is the ANSI code page: a Korean path
        try:                                  # in a message must not end the install with UnicodeEncodeError
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"Installation failed (exit code {exc.returncode}); see the pip output above.", file=sys.stderr)
        sys.exit(1)
