"""Results tab (being built)."""

from __future__ import annotations

from loratrainer.gui.context import UiContext


def build(ui: UiContext):
    import gradio as gr

    gr.Markdown(ui.t("results.intro"))
