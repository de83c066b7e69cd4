"""Turn files uploaded from the page (images, captions, or one .zip of them) into a plain folder that the copy-safe
prepare (data/prepare.py) reads, inside a fresh temporary folder the caller removes afterwards.

A zip is unpacked by hand, member by member, with the standard library: zipfile's own `extractall` only
sanitises names (it silently drops `..` and leading slashes), where a hostile zip should be refused in one
sentence before anything is written. Refused: a member with an absolute path or `..`, a link (Unix mode in
`external_attr`), more than MAX_MEMBERS entries, more than MAX_UNPACKED_BYTES in all, or a member that expands
more than MAX_RATIO times (a zip bomb: megabytes of zeros shrink to a few kilobytes).
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from loratrainer.errors import UserError
from loratrainer.messages import Msg, define

define({
    "upload.zip.unsafe_path": "the zip {zip}: its entry {member} would unpack outside its folder (an absolute path or '..'); the zip is refused and nothing was unpacked",
    "upload.zip.link": "the zip {zip}: its entry {member} is a link; zips with links are refused and nothing was unpacked",
    "upload.zip.too_many": "the zip {zip} holds {count} entries, more than {limit}; the zip is refused and nothing was unpacked",
    "upload.zip.too_large": "the zip {zip} would unpack to {size} MB, more than {limit} MB; the zip is refused and nothing was unpacked",
    "upload.zip.bomb": "the zip {zip}: its entry {member} expands {ratio} times, more than {limit} times (a zip bomb); the zip is refused and nothing was unpacked",
    "upload.zip.broken": "the upload {zip} is not a readable zip file ({reason})",
    "upload.bad_name": "the uploaded file name {name} is not a plain file name",
})

MAX_MEMBERS = 5000  # far above any LoRA dataset (tens to hundreds of images, each with a caption)
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024  # 1 GB; the page's upload route passes twice its own limit (gui/upload_route.py)
MAX_RATIO = 200  # images barely compress (PNG/JPEG: about 1x); text captions reach 5-20x; zeros reach 1000x
_CHUNK = 1024 * 1024


def gather_upload(files: Sequence[str | Path], into: Path, *, move: bool = False, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Copy (with `move`: move) uploaded files and unpack uploaded zips into the empty folder `into`; return the
    folder prepare should read (dataset_root)."""
    for f in files:
        src = Path(f)
        if _is_zip(src):
            unpack_zip(src, into, max_bytes=max_bytes)
        else:
            target = free_name(into / plain_name(src.name))
            if move:
                src.rename(target)  # the route's received/ folder is beside `into`: same disk, no second copy
            else:
                shutil.copyfile(src, target)
    return dataset_root(into)


def dataset_root(into: Path) -> Path:
    """`into`, or the single top folder a zip made of a folder ("houses/a.png", ...) holds."""
    entries = [p for p in into.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return into


def unpacked_size(files: list[str | Path]) -> int:
    """The bytes gather_upload(move=True) writes: what the zips' entries declare (unpack_zip holds each entry to
    its declared size); loose files are moved, not copied. A broken zip counts 0 (gather_upload refuses it)."""
    total = 0
    for f in files:
        if _is_zip(Path(f)):
            try:
                with zipfile.ZipFile(f) as zf:
                    total += sum(max(i.file_size, 0) for i in zf.infolist())
            except (zipfile.BadZipFile, OSError):
                continue
    return total


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


def unpack_zip(zip_path: Path, into: Path, *, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_UNPACKED_BYTES,
               max_ratio: int = MAX_RATIO) -> list[Path]:
    """Check every entry of the zip first (nothing is written for a refused zip), then unpack the files under
    `into` only. Returns the files written."""
    label = zip_path.name
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            if len(members) > max_members:
                raise UserError(Msg.of("upload.zip.too_many", zip=label, count=len(members), limit=max_members))
            total = 0
            plan: list[tuple[zipfile.ZipInfo, Path]] = []
            for info in members:
                parts = _safe_parts(info.filename)
                if parts is None:
                    raise UserError(Msg.of("upload.zip.unsafe_path", zip=label, member=info.filename))
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UserError(Msg.of("upload.zip.link", zip=label, member=info.filename))
                if info.is_dir() or not parts:
                    continue
                total += info.file_size
                if total > max_bytes:
                    raise UserError(Msg.of("upload.zip.too_large", zip=label, size=_mb(total), limit=_mb(max_bytes)))
                if info.file_size > _CHUNK and info.file_size > max_ratio * max(info.compress_size, 1):
                    raise UserError(Msg.of("upload.zip.bomb", zip=label, member=info.filename,
                                           ratio=info.file_size // max(info.compress_size, 1), limit=max_ratio))
                plan.append((info, into.joinpath(*parts)))
            root = into.resolve()
            written: list[Path] = []
            for info, target in plan:
                if not target.resolve().is_relative_to(root):  # belt and braces: _safe_parts already refused these
                    raise UserError(Msg.of("upload.zip.unsafe_path", zip=label, member=info.filename))
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_member(zf, info, free_name(target), max(info.file_size, 0))
                written.append(target)
            return written
    except zipfile.BadZipFile as exc:
        raise UserError(Msg.of("upload.zip.broken", zip=label, reason=str(exc))) from None


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, declared: int) -> None:
    """Stream one member, never more than it declared (the checks above trusted the declared size)."""
    seen = 0
    with zf.open(info) as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            seen += len(chunk)
            if seen > declared:
                raise UserError(Msg.of("upload.zip.broken", zip=Path(zf.filename or "").name, reason=f"{info.filename} is longer than it says"))
            dst.write(chunk)


def _safe_parts(name: str) -> tuple[str, ...] | None:
    """The path parts of a member name, or None where it is absolute or climbs with '..' (also as a Windows zip
    writes them: backslashes, a drive letter)."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        return None
    parts = tuple(p for p in PurePosixPath(unified).parts if p not in ("", "."))
    if any(p == ".." or "\0" in p for p in parts):
        return None
    return parts


def plain_name(name: str) -> str:
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise UserError(Msg.of("upload.bad_name", name=name))
    return name


def free_name(target: Path) -> Path:
    """Never overwrite inside the temporary folder either: two uploads with one name keep both ("a (2).png")."""
    if not target.exists():
        return target
    for i in range(2, 10000):
        candidate = target.with_name(f"{target.stem} ({i}){target.suffix}")
        if not candidate.exists():
            return candidate
    raise UserError(Msg.of("upload.bad_name", name=target.name))


def _mb(n: int) -> int:
    return max(1, round(n / (1024 * 1024)))
