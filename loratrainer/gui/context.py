"""What every tab builder receives: the translator, the shared job and display handles, and the registries
of components by name (schema fields by path, a few cross-tab components by a plain name).

One UiContext per Blocks (per language), created in app.build_blocks; nothing here is module-global.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from loratrainer.config import TrainingConfig
from loratrainer.gui.form import config_values, make_field, specs_by_path, values_to_config
from loratrainer.gui.i18n import Translator


@dataclass
class UiContext:
    t: Translator
    jobs: Any  # jobs.Jobs
    display: Any  # display.Display
    fields: dict[str, Any] = field(default_factory=dict)  # field path -> component
    named: dict[str, Any] = field(default_factory=dict)  # cross-tab components, e.g. "run_dir"
    handlers: dict[str, Any] = field(default_factory=dict)  # tab name -> its handler object (tests call these)
    browse_limited: bool = False  # --listen: the file browser shows only the home folder and `browse_folders`
    browse_folders: tuple[str, ...] = ()  # the folders given with --browse-root at start (the server's, not a request's)
    _loads: list[tuple[Callable, Any, Any]] = field(default_factory=list)
    _after: list[Callable[[], None]] = field(default_factory=list)

    def field(self, path: str, **extra: Any):
        """Create and register the component of a schema field (each field exactly once); a path field (the
        schema's `ui(browse=...)`) gets a Browse… button beside it and the browser panel under it."""
        if path in self.fields:
            raise ValueError(f"field {path} is already on the page")
        spec = specs_by_path()[path]
        if spec.browse is None:
            component = make_field(spec, self.t, **extra)
        else:
            import gradio as gr

            from loratrainer.gui import filebrowser

            with gr.Column():
                component, _ = filebrowser.path_box(self, lambda: make_field(spec, self.t, **extra), files=spec.browse in ("model", "file"),
                                                 key=spec.check or spec.name)
        self.fields[path] = component
        return component

    def config_inputs(self) -> set:
        """All field components as a set: the handler gets {component: value}, never a positional list."""
        return set(self.fields.values())

    def paths_of(self, data: dict) -> dict[str, Any]:
        by_component = {id(c): p for p, c in self.fields.items()}
        return {by_component[id(c)]: v for c, v in data.items() if id(c) in by_component}

    def read_config(self, data: dict) -> TrainingConfig:
        """The config on the page (raises UserError naming the bad fields)."""
        return values_to_config(self.paths_of(data))

    def show_config(self, config: TrainingConfig) -> dict:
        """{component: value} that puts a config on the page."""
        values = config_values(config)
        return {c: values[p] for p, c in self.fields.items()}

    def on_load(self, fn: Callable, inputs: Any = None, outputs: Any = None) -> None:
        self._loads.append((fn, inputs, outputs))

    def after_build(self, wire: Callable[[], None]) -> None:
        """Wire events that need components of later tabs (the Dataset tab's step calculator reads epochs)."""
        self._after.append(wire)

    def finish(self, blocks) -> None:
        for wire in self._after:
            wire()
        for fn, inputs, outputs in self._loads:
            blocks.load(fn, inputs=inputs, outputs=outputs, api_visibility="undocumented")
