"""A .safetensors writer that takes one tensor at a time, so a tool never holds its whole output in memory.

Tensors are appended to a temporary data file next to the output; `finish` writes the header and copies the
data into a second temporary file that is renamed into place (files.atomic_write_with, never over an existing
file). The layout is safetensors' own (8-byte header length, JSON header padded with spaces to 8 bytes, tensors
ordered by dtype then name), so the data section is byte for byte what safetensors.torch.save_file writes for
the same tensors and Kohya's sshs_* hashes (model/metadata.py) come out the same as for a file saved in one piece
(only the order of the metadata keys in the header may differ: safetensors' own order is a hash map's).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from loratrainer.files import atomic_write_with
from loratrainer.model.errors import NonFiniteLoraError, OutputExists
from loratrainer.tools.messages import tool_error

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
# safetensors orders the data by its Dtype enum, last member first, then by name
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
CHUNK = 16 * 1024 * 1024


@dataclass
class _Entry:
    name: str
    dtype: torch.dtype
    shape: list[int]
    offset: int  # in the temporary data file
    nbytes: int


class StreamingSafetensorsWriter:
    """`add(name, tensor)` per tensor, then `finish(metadata)`; `abort()` (or an exception in a `with`) leaves
    nothing behind. `check_finite` refuses NaN/inf before anything is written (a LoRA that renders black)."""

    def __init__(self, path: str | Path, *, check_finite: bool = True):
        self.path = Path(path)
        if os.path.lexists(self.path):
            raise OutputExists(tool_error("output_exists", path=str(self.path)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.check_finite = check_finite
        fd, self._data_path = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".data", dir=self.path.parent)
        self._data = os.fdopen(fd, "w+b")
        self._entries: dict[str, _Entry] = {}
        self._size = 0

    def __enter__(self) -> "StreamingSafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()  # after finish() this only removes the temporary data file

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"tensor {name} added twice")
        t = tensor.detach().to("cpu").contiguous()
        if self.check_finite and t.is_floating_point() and not torch.isfinite(t).all():
            module = name.rsplit(".lora_", 1)[0].removesuffix(".alpha")
            raise NonFiniteLoraError(tool_error("non_finite", module=module))
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        self._data.write(memoryview(raw))
        self._entries[name] = _Entry(name, t.dtype, list(t.shape), self._size, t.numel() * t.element_size())
        self._size += self._entries[name].nbytes

    def finish(self, metadata: dict[str, str] | None = None, *, kohya_hashes: bool = False) -> Path:
        """Write the file. `kohya_hashes` adds sshs_model_hash/sshs_legacy_hash as Kohya's LoRA files carry."""
        self._data.flush()
        order = sorted(self._entries.values(), key=lambda e: (-DTYPE_ORDER.index(DTYPE_NAMES[e.dtype]), e.name))
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        if kohya_hashes:
            meta = self._with_hashes(order, meta)
        header = _header(order, meta)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as out:
                out.write(header)
                self._copy(order, out)

        try:
            return atomic_write_with(self.path, write, overwrite=False)
        except FileExistsError as exc:
            raise OutputExists(tool_error("output_appeared", path=str(self.path))) from exc

    def abort(self) -> None:
        if not self._data.closed:
            self._data.close()
        Path(self._data_path).unlink(missing_ok=True)

    def _copy(self, order: list[_Entry], out) -> None:
        for e in order:
            self._data.seek(e.offset)
            left = e.nbytes
            while left:
                chunk = self._data.read(min(CHUNK, left))
                out.write(chunk)
                left -= len(chunk)

    def _with_hashes(self, order: list[_Entry], meta: dict[str, str]) -> dict[str, str]:
        # model/metadata.with_safetensors_hashes, computed from the data file instead of tensors in memory:
        # both hashes are taken over the file as it would be with only the ss_* metadata keys
        payload = hashlib.sha256()
        legacy_window = bytearray()
        ss_header = _header(order, {k: v for k, v in meta.items() if k.startswith("ss_")})
        start, end = 0x100000, 0x100000 + 0x10000
        position = len(ss_header)
        if position > start:
            legacy_window += ss_header[start:end]

        class _Sink:
            def write(self, chunk: bytes) -> None:
                nonlocal position
                payload.update(chunk)
                lo, hi = max(start, position), min(end, position + len(chunk))
                if lo < hi:
                    legacy_window.extend(chunk[lo - position : hi - position])
                position += len(chunk)

        self._copy(order, _Sink())
        return {**meta, "sshs_model_hash": payload.hexdigest(),
                "sshs_legacy_hash": hashlib.sha256(bytes(legacy_window)).hexdigest()[:8]}


def _header(order: list[_Entry], meta: dict[str, str]) -> bytes:
    header: dict = {}
    if meta:
        header["__metadata__"] = dict(sorted(meta.items()))
    offset = 0
    for e in order:
        header[e.name] = {"dtype": DTYPE_NAMES[e.dtype], "shape": e.shape, "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text
