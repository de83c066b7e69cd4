"""Dataset tab (being built)."""

from __future__ import annotations

from loratrainer.gui.context import UiContext


def build(ui: UiContext):
    for path in ("folders.train_data_dir", "folders.reg_data_dir", "folders.output_dir", "folders.logging_dir"):
        ui.field(path)
