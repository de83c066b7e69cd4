"""Writing files so that a crash, a kill or a full disk never leaves half a file (docs/reliability.md).

A leaf module: it imports nothing else of ours, so every layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, data: bytes | str, *, overwrite: bool = True) -> Path:
    """Write `data` to `path` via a temporary file in the same folder: flush, fsync, rename.

    With overwrite=False an existing file raises FileExistsError instead of being replaced.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(payload), overwrite=overwrite)


def atomic_write_with(path: str | Path, writer: Callable[[str], object], *, overwrite: bool = True) -> Path:
    """Let `writer(tmp_path)` produce the file (e.g. safetensors' save_file), then move it into place atomically.

    On any failure (a full disk included) the temporary file is removed and the old file is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists and will not be overwritten")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        # mkstemp makes the file 0600 (and a writer may replace it with another 0600 file, as safetensors does); the
        # finished file gets the mode any program's new file gets (0644 under the usual umask 022)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if not overwrite:
            # os.link fails if the name appeared meanwhile, so a file created by someone else is never replaced.
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it, which another thread of
    the GUI could observe in between)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; the rename is durable enough there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def free_name_beside(path: Path, tag: str) -> Path:
    """`<name>.<tag>-<YYYYmmdd-HHMMSS>` beside `path`, with -2, -3, ... when that name is taken: a file set aside
    never replaces one set aside before it in the same second (it is the user's file, kept for them to look at)."""
    import time

    base = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}")
    candidate, n = base, 2
    while os.path.lexists(candidate):
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate
