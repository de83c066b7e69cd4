"""Create or update the project's virtual environment (.venv) so that gui.sh, gui.bat and test.sh just work.

Runs with any Python >= 3.10 and the standard library only. It installs on the first run and again whenever
pyproject.toml (or the requested extras) changed; otherwise it returns in well under a second.

PyTorch is installed first, on its own, because the right build depends on the machine:
- Windows with an NVIDIA GPU: PyPI's Windows wheel is CPU-only, so a CUDA build comes from PyTorch's index.
- everywhere else: pip's ordinary choice (PyPI's Linux wheels include CUDA and also run on the CPU).
- LORATRAINER_TORCH overrides the requirement (e.g. "torch==2.13.0" for a CPU wheel you keep locally), and
  LORATRAINER_TORCH_INDEX the index URL.
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


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


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
    index = os.environ.get("LORATRAINER_TORCH_INDEX")
    if index is None and os.name == "nt" and has_nvidia_gpu():
        index = CUDA_INDEX
    args = ["install", requirement]
    if index:
        args += ["--index-url", index]
    pip(*args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="optional dependency group, e.g. test")
    args = parser.parse_args()
    if sys.version_info < (3, 10):
        print(f"loratrainer needs Python 3.10 or newer; this is {platform.python_version()}.", file=sys.stderr)
        return 1
    if not venv_python().exists():
        print(f"Creating the virtual environment in {VENV} (first run only)...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = wanted_stamp(args.extra)
    if STAMP.exists() and STAMP.read_text() == stamp:
        return 0
    print("Installing loratrainer and its libraries (first run or pyproject.toml changed)...", flush=True)
    if not torch_installed():
        install_torch()
    target = "." + (f"[{','.join(args.extra)}]" if args.extra else "")
    pip("install", "--editable", target)
    STAMP.write_text(stamp)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"Installation failed (exit code {exc.returncode}); see the pip output above.", file=sys.stderr)
        sys.exit(1)
