"""Time `loratrainer check` on 10,000 small images (target: under 15 s). Not part of the test suite.

    .venv/bin/python bench/bench_check.py [--images 10000] [--keep DIR]

Images are written once as copies of a few small PNG/JPEG files (writing is not what we time), in 10 concept
folders with captions on half of them, then `python -m loratrainer check DIR --json` runs as a user would.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZES = [(512, 512), (640, 384), (384, 640), (768, 512), (300, 200)]


def _templates() -> list[tuple[str, bytes]]:
    out = []
    for i, size in enumerate(SIZES):
        buf = io.BytesIO()
        fmt, ext = ("JPEG", ".jpg") if i % 2 else ("PNG", ".png")
        Image.new("RGB", size, (40 * i, 90, 160)).save(buf, fmt)
        out.append((ext, buf.getvalue()))
    return out


def make_images(root: Path, count: int) -> None:
    templates = _templates()
    folders = [root / f"{r}_concept {r}" for r in range(1, 11)]
    for f in folders:
        f.mkdir(parents=True)
    for i in range(count):
        ext, data = templates[i % len(templates)]
        image = folders[i % len(folders)] / f"img_{i:05d}{ext}"
        image.write_bytes(data)
        if i % 2 == 0:
            image.with_suffix(".txt").write_text(f"caption {i}\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="build the dataset here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_check_"))
    try:
        t0 = time.perf_counter()
        make_images(root / "image", args.images)
        print(f"wrote {args.images} images in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "loratrainer", "check", str(root / "image"), "--json"],
                             cwd=REPO, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        report = json.loads(out.stdout)
        print(f"loratrainer check: {elapsed:.2f} s for {report['images']} images "
              f"({report['total_steps']} steps, {len(report['buckets'])} buckets, exit code {out.returncode})")
        return 0 if report["images"] == args.images and elapsed < 15 else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
