"""When and under which name LoRA files are saved, and which older ones of this run are removed.

Names follow Kohya: `<name>-000001.safetensors` per epoch, `<name>-step00000500.safetensors` per step,
`<name>.safetensors` at the end, and `<name>-interrupted.safetensors` on stop. Only files this run wrote are
ever removed (save_last_n_*); a file that exists is never overwritten (the launcher resolved the name).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loratrainer.config import SavingSettings
from loratrainer.run.files import STATE_FILE, checkpoint_name, interrupted_name, state_folder_name


@dataclass(frozen=True)
class Progress:
    step: int  # optimizer steps done
    epoch: int  # 1-based epoch being trained (or just finished)
    total_steps: int
    epochs: int
    epoch_done: bool = False  # the epoch ran to its end (not cut short by max_train_steps)


def save_due(s: SavingSettings, p: Progress) -> str | None:
    """'epoch', 'step' or None by the config's save_every_n_*. Every selected epoch gets its numbered file, the last
    one too (Kohya skips it, so a 2-epoch run had no `-000002` to compare with); the last step gets only the final file."""
    if p.epoch_done:
        return "epoch" if s.save_every_n_epochs and p.epoch % s.save_every_n_epochs == 0 else None
    if p.step >= p.total_steps:
        return None
    return "step" if s.save_every_n_steps and p.step % s.save_every_n_steps == 0 else None


@dataclass
class CheckpointKeeper:
    """Saves through `write(path, progress)` and removes this run's files beyond save_last_n_*."""

    output_dir: Path
    output_name: str
    saving: SavingSettings  # the config's own group: save_last_n_epochs, save_last_n_steps
    write: Callable[[Path, Progress], None]
    written: dict[str, list[tuple[int, Path]]] = field(default_factory=lambda: {"epoch": [], "step": []})

    def save(self, kind: str, p: Progress) -> Path:
        path = self.output_dir / checkpoint_name(self.output_name, kind, p)
        n = 2
        while kind == "interrupted" and path.exists():  # stopped again after a resume
            path = self.output_dir / interrupted_name(self.output_name, n)
            n += 1
        self.write(path, p)
        if kind in self.written:
            self.written[kind].append((p.epoch if kind == "epoch" else p.step, path))
            self._rotate(kind, p)
        return path

    def _rotate(self, kind: str, p: Progress) -> None:
        keep = self.saving
        if kind == "epoch" and keep.save_last_n_epochs:
            stale = self.written["epoch"][: -keep.save_last_n_epochs]
        elif kind == "step" and keep.save_last_n_steps:
            stale = [(s, f) for s, f in self.written["step"] if s <= p.step - keep.save_last_n_steps]
        else:
            return
        for entry in stale:
            entry[1].unlink(missing_ok=True)
            state = state_folder_name(entry[1])  # its saved training state, if any
            if (state / STATE_FILE).exists():
                shutil.rmtree(state, ignore_errors=True)
            self.written[kind].remove(entry)
