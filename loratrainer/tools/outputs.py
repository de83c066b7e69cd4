"""Output names: the CLI refuses an existing -o; the GUI writes beside the inputs under the first free name.

No torch here: the GUI process uses this to choose names before it starts a tool.
"""

from __future__ import annotations

import os
from pathlib import Path

from loratrainer.model.errors import OutputExists
from loratrainer.tools.messages import tool_error


def refuse_existing(path: str | Path) -> Path:
    """`path` when nothing is there; OutputExists (a UserError) otherwise. Tools never replace a file."""
    path = Path(path)
    if os.path.lexists(path):  # a dangling link is there too: it used to pass here and fail as "appeared while writing"
        raise OutputExists(tool_error("output_exists", path=str(path)))
    return path


def free_name(folder: str | Path, stem: str, suffix: str = ".safetensors") -> Path:
    """`folder/stem.suffix`, or `stem-2.suffix`, `stem-3.suffix`, ... : the first name not taken."""
    folder = Path(folder)
    candidate = folder / f"{stem}{suffix}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate
