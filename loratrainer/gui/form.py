"""Schema-driven form fields: one Gradio component per TrainingConfig field, named by the field's path.

Values travel between the page and the config by name only: handlers receive `{component: value}` (Gradio's
set-of-inputs form), which `values_to_config` turns into `{path: value}` through the registry, and return
`{component: value}` built by `config_to_updates`. Nothing depends on the order of components.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from loratrainer.config import KNOWN_OPTIMIZERS, FieldSpec, TrainingConfig, describe_validation_error, field_specs, get_value, with_values
from loratrainer.config.files import validation_fields
from loratrainer.errors import UserError
from loratrainer.gui.i18n import Translator
from loratrainer.messages import Msg, define

define({"form.not_applied": "The form's values could not be applied: {detail}"})


def basic_paths() -> list[str]:
    """The Basic settings (the schema's `ui(basic=n)`), in their order; everything else is Advanced."""
    return [s.path for s in sorted((s for s in field_specs() if s.basic is not None), key=lambda s: s.basic or 0)]


def path_checks(group: str) -> dict[str, str]:
    """{path: check role} of a group's fields that get the as-you-type path check (the schema's `ui(check=...)`)."""
    return {s.path: s.check for s in field_specs() if s.group == group and s.check}


def elem_id(path: str) -> str:
    """The DOM id of a field's component: `field-network-network_dim` for `network.network_dim`."""
    return "field-" + path.replace(".", "-")


def is_rate(spec: FieldSpec) -> bool:
    """A learning-rate box: a text box, not a browser number box, so "0,0001" (a decimal comma) and " 1e-3 " can
    be typed, read, and said back (issue 22); what reaches the schema is a number (`read_rate`)."""
    return spec.kind == "float" and spec.group == "optimizer" and (spec.name == "learning_rate" or spec.name.endswith("_lr"))


def read_rate(value: Any) -> Any:
    """A rate box's text -> a float (a decimal comma read as a point, spaces ignored), None when empty, or the
    text itself when it is no number (the schema then names the box)."""
    if not isinstance(value, str):
        return value
    text = value.strip().replace(" ", "")
    if not text:
        return None
    if "," in text and "." not in text and text.count(",") == 1:
        text = text.replace(",", ".")
    try:
        number = float(text)
    except ValueError:
        return value
    return number if number == number and abs(number) != float("inf") else value


def rate_text(value: Any) -> str:
    """A rate as its box shows it: 0.0001, 5e-05; empty for None."""
    return "" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)


def make_field(spec: FieldSpec, t: Translator, **extra: Any):
    """The component for one schema field, labelled and explained in the page's language."""
    import gradio as gr

    common = dict(label=t.label(spec.path), info=t.help(spec.path), elem_id=elem_id(spec.path), elem_classes=["lt-field"], **extra)
    kind = spec.kind
    if spec.path == "optimizer.optimizer":
        return gr.Dropdown(choices=list(KNOWN_OPTIMIZERS), value=spec.default, allow_custom_value=True, **common)
    if kind == "bool":
        return gr.Checkbox(value=spec.default, **common)
    if kind == "choice":
        return gr.Dropdown(choices=list(spec.choices or ()), value=spec.default, **common)
    if is_rate(spec):
        return gr.Textbox(value=rate_text(spec.default), max_lines=1, **common)
    if kind in ("int", "float"):
        # no Gradio bounds: Gradio would refuse an out-of-range value before any handler, naming no box; the
        # handler reads the value through the schema, which refuses it naming the setting
        return gr.Number(value=spec.default, precision=0 if kind == "int" else None, **common)
    lines = spec.lines
    return gr.Textbox(value=spec.default, lines=lines, max_lines=max(lines, 20) if lines > 1 else 1, **common)


def number_box(value: Any = None, *, minimum: float | None = None, maximum: float | None = None, **kwargs: Any):
    """A Number box that is not a setting, with bounds the page's guard checks before any handler runs
    (bounds_problem), naming the box. Gradio gets no bounds: it would refuse first, naming no box."""
    import gradio as gr

    box = gr.Number(value, **kwargs)
    box.lt_bounds = (minimum, maximum)
    return box


def bounds_problem(component: Any, value: Any, t: Translator, label: str) -> str | None:
    """The sentence refusing a number_box's value outside its bounds, or None."""
    minimum, maximum = getattr(component, "lt_bounds", (None, None))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if minimum is not None and value < minimum:
        return t("form.greater_than_equal", label=label, ge=minimum, got=value)
    if maximum is not None and value > maximum:
        return t("form.less_than_equal", label=label, le=maximum, got=value)
    return None


@cache  # the page asks for it for each of its ~250 boxes; read-only
def specs_by_path() -> dict[str, FieldSpec]:
    return {s.path: s for s in field_specs()}


def form_value(spec: FieldSpec, value: Any) -> Any:
    """A component's value as the schema expects it: a rate box's text read (a decimal comma too), anything else
    by the field's one coerce (Number gives floats, Dropdowns strings, cleared boxes None). A value that is no
    such thing goes to the schema as it is, whose error names the box in the page's language."""
    if is_rate(spec):
        return read_rate(value)
    try:
        return spec.coerce(value)
    except ValueError:
        return value


class FormError(UserError):
    """Bad values on the form: str() is the English line per field; `fields` lets the page say it in its language."""

    def __init__(self, text: str, fields: list[dict[str, Any]]):
        super().__init__(text, fields=fields)


def values_to_config(values: dict[str, Any], base: TrainingConfig | None = None) -> TrainingConfig:
    """{path: value} from the page -> a validated config; a UserError names every bad field."""
    specs = specs_by_path()
    data = {path: form_value(specs[path], v) for path, v in values.items() if path in specs}
    try:
        return with_values(base or TrainingConfig(), data)
    except Exception as exc:  # pydantic.ValidationError: shown as one line per field
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise FormError(describe_validation_error(exc), validation_fields(exc)) from None
        raise UserError(Msg.of("form.not_applied", detail=str(exc))) from None


def config_values(config: TrainingConfig) -> dict[str, Any]:
    """{path: value} for every field, as the components show them."""
    return {path: rate_text(get_value(config, path)) if is_rate(spec) else get_value(config, path) for path, spec in specs_by_path().items()}
