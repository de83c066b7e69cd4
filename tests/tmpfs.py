"""A real small file system for the tests that need a disk which really fills (root only: `mount -t tmpfs`)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (e.g. "1m") at `folder` for the duration; skip where mounting is not possible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the disk-full paths are then covered by injection tests only")
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
