"""The repository stands on its own: no code, test or doc cites a file outside it (a fresh clone on another
machine has no shared folders), and every document cited by name is in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
# Built from parts so that this file does not match its own patterns.
OUTSIDE = re.compile("|".join([r"/wo" + r"rk/", r"\.\./sha" + r"red\b", r"/sha" + r"red/(?:reference|fixtures)"]))
# A document named in text; a quoted name is a path part in code (Path(...) / "docs" / "x.md"), checked by its use.
CITED_DOC = re.compile(r"(?<![\w./\"'-])((?:[\w.-]+/)*[\w-]+\.md)\b")
# Written on other branches at the time of this test; remove a name once its file is on main (none now:
# docs/kohya-compat.md and docs/reliability.md are both in the repository).
PENDING: set[str] = set()


def repo_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout
        names = out.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive)
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    return [REPO / n for n in names if (REPO / n).is_file()]


def texts():
    for path in repo_files():
        if path.suffix not in {".py", ".md", ".json", ".toml", ".sh", ".bat", ".txt", ".js", ".css", ".cfg", ""}:
            continue
        try:
            yield path, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for path, text in texts()
        for m in OUTSIDE.finditer(text)
    ]
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_every_cited_document_is_in_the_repository() -> None:
    missing = []
    for path, text in texts():
        if "fixtures" in path.parts:
            continue  # third-party copies say what they say
        for m in CITED_DOC.finditer(text):
            name = m.group(1)
            if name in PENDING and not (REPO / name).is_file():
                continue
            if not ((REPO / name).is_file() or (path.parent / name).is_file()):
                missing.append(f"{path.relative_to(REPO)}: {name}")
    assert not missing, "cited documents that are not in the repository:\n" + "\n".join(missing)
