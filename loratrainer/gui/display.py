"""The app's folder of files made for display: thumbnails of dataset images and copies of sample images.

Gradio's file route serves its own temporary folder (a private one per server, see server.py) and nothing
else we did not put there; this class is how images reach the page. The user's files are only read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import zipfile
from pathlib import Path


class Display:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _target(self, source: Path, tag: str, suffix: str) -> Path:
        st = source.stat()
        key = hashlib.sha1(f"{source.resolve()}|{st.st_mtime_ns}|{st.st_size}|{tag}".encode()).hexdigest()[:20]
        return self.root / f"{key}{suffix}"

    def thumbnail(self, source: str | Path, max_side: int = 256) -> str | None:
        """A small RGB JPEG of an image, or None when it cannot be read (the dataset check says why)."""
        source = Path(source)
        try:
            target = self._target(source, f"thumb{max_side}", ".jpg")
            if target.exists():
                return str(target)
            from PIL import Image, ImageOps

            from loratrainer.data.images import to_rgb

            with Image.open(source) as opened:
                im = ImageOps.exif_transpose(opened)
                im.thumbnail((max_side, max_side))
                im = to_rgb(im)  # as training sees it: alpha on white, 16-bit scaled (not clipped to white)
                tmp = target.with_suffix(".tmp.jpg")
                im.save(tmp, "JPEG", quality=85)
                tmp.replace(target)
            return str(target)
        except Exception:
            return None

    def download(self, source: str | Path) -> str | None:
        """A run's file offered for download under its own name (the page's download takes the file's name): a hard
        link in a folder of its own where the file system allows (no second copy of a large LoRA), else a copy;
        None when it is gone."""
        source = Path(source)
        try:
            folder = self._target(source, "download", "")
            target = folder / source.name
            if not target.exists():
                with self._lock:
                    folder.mkdir(exist_ok=True)
                    try:
                        os.link(source, target)
                    except OSError:
                        shutil.copyfile(source, target)
            return str(target)
        except OSError:
            return None

    def zip_download(self, name: str, sources: list[Path]) -> str | None:
        """The files in one zip (stored, not compressed: LoRA files and PNGs hardly shrink), each under its own name
        (a repeated name gets its folder's name in front); None when none of them exists."""
        present = [Path(s) for s in sources if Path(s).is_file()]
        if not present:
            return None
        key = hashlib.sha1("|".join(f"{p.resolve()}:{p.stat().st_mtime_ns}" for p in present).encode()).hexdigest()[:20]
        folder = self.root / key
        target = folder / f"{name}.zip"
        if target.exists():
            return str(target)
        with self._lock:
            folder.mkdir(exist_ok=True)
            partial = folder / f".{name}.zip.partial"
            seen: set[str] = set()
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for path in present:
                    arcname = path.name if path.name not in seen else f"{path.parent.name}/{path.name}"
                    seen.add(arcname)
                    zf.write(path, arcname)
            partial.replace(target)
        return str(target)

    def placeholder(self, source: str | Path, max_side: int = 256) -> str:
        """A grey tile with a cross, standing in for an image that cannot be shown (the caption editor lists it by
        name with the reason). One file per source path, so each gallery entry still names its own image."""
        source = Path(source)
        key = hashlib.sha1(f"{source.absolute()}|unreadable|{max_side}".encode()).hexdigest()[:20]
        target = self.root / f"{key}-unreadable.png"
        if not target.exists():
            from PIL import Image, ImageDraw

            im = Image.new("RGB", (max_side, max_side), (228, 228, 231))
            draw = ImageDraw.Draw(im)
            m, w = max_side // 3, max(2, max_side // 40)
            draw.line((m, m, max_side - m, max_side - m), fill=(161, 161, 170), width=w)
            draw.line((m, max_side - m, max_side - m, m), fill=(161, 161, 170), width=w)
            tmp = target.with_suffix(".tmp.png")
            im.save(tmp, "PNG")
            tmp.replace(target)
        return str(target)

    def copy(self, source: str | Path) -> str | None:
        """A copy of a file made by a run (a sample image), or None when it is gone."""
        source = Path(source)
        try:
            target = self._target(source, "copy", source.suffix.lower())
            if not target.exists():
                with self._lock:
                    shutil.copyfile(source, target)
            return str(target)
        except OSError:
            return None
