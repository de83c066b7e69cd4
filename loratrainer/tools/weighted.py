"""`FILE[:WEIGHT]` arguments of merge and merge-into.

No torch here: the GUI process parses the LoRA tools tab's file list with this before it starts a tool (the
tools themselves import torch and run in a subprocess).
"""

from __future__ import annotations

from pathlib import Path


def parse_weighted(spec: str) -> tuple[Path, float]:
    """`FILE[:WEIGHT]`: the weight after the last colon when it is a number (a Windows drive letter is not)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and not (len(head) == 1 and head.isalpha()):
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(spec), 1.0
