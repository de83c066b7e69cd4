"""A .safetensors file's JSON header, read only from a regular file and only within its stated, bounded size.

Every reader of a user-named LoRA (the LoRA tools, compare, the Results tab's metadata) goes through here first
(docs/reliability.md "LoRA tools and compare"): a FIFO would block the open or the read for ever, /dev/zero
states a header length of 0 and then reads on without end, a header length larger than the file or than
MAX_HEADER_BYTES is a damaged file, and a header that is JSON but not an object is no safetensors header. No torch.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the header (safetensors/src/tensor.rs MAX_HEADER_SIZE)


class HeaderError(Exception):
    """Why a file has no usable safetensors header: `reason` is "missing", "not_regular" or "damaged";
    `detail` is a short English phrase (for "damaged")."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.detail = reason, detail


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of `path` when it is a regular file (a link to one is fine), else HeaderError.
    O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat then refuses it (and devices)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise HeaderError("missing") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise HeaderError("damaged", getattr(exc, "strerror", None) or str(exc)) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HeaderError("not_regular")
    return fd


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file or a link to one; False for a FIFO, a device, a folder or nothing (no open)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _read_at(fd: int, count: int, offset: int) -> bytes:
    """Up to `count` bytes from `offset` (fewer only at the end of the file). os.pread is POSIX-only (Windows has
    no such function: an AttributeError for every LoRA there), so: seek, then read until `count` or the end."""
    os.lseek(fd, offset, os.SEEK_SET)
    chunks: list[bytes] = []
    while count > 0:
        chunk = os.read(fd, count)
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_header(path: str | Path) -> dict:
    """The header object (tensor entries and "__metadata__") of a regular .safetensors file, or HeaderError."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        head = _read_at(fd, 8, 0)
        if len(head) < 8:
            raise HeaderError("damaged", "shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if length < 2 or length > MAX_HEADER_BYTES or length + 8 > size:
            raise HeaderError("damaged", f"its header length {length} does not fit a file of {size} bytes")
        raw = _read_at(fd, length, 8)
    finally:
        os.close(fd)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HeaderError("damaged", "its header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise HeaderError("damaged", "its header is not a JSON object")
    return header


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header's `__metadata__` as strings ({} when it has none or it is not an object); HeaderError as above."""
    meta = read_header(path).get("__metadata__", {})
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
