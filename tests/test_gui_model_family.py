"""The Training tab knows the chosen model's family from its weights (issue 21): the note next to the model box
says "SDXL model ... 1024 px" for an SDXL file whatever its name, and offers the SDXL defaults as a button; the
user's own values are changed only when the button is pressed, in English and Korean."""

from __future__ import annotations

import pytest

from loratrainer.config import TrainingConfig, with_values
from tests.test_gui_handlers import by_path, form, page  # noqa: F401  (the module-scoped page fixture)
from tests.test_model_family_launch import sdxl_header_file
from tests.tiny_sd import save_tiny_single_file


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui-family")
    return {"sdxl": sdxl_header_file(root / "my-sd15-model.safetensors"), "sd15": save_tiny_single_file(root / "animagine-xl.safetensors")}


def _visible(update) -> bool:
    return bool(update.get("visible")) if isinstance(update, dict) else bool(getattr(update, "visible", False))


def test_an_sdxl_model_is_named_sdxl_and_the_defaults_are_offered_not_applied(page, models):  # noqa: F811
    h = page.handlers["training"]
    config = with_values(TrainingConfig(), {"pretrained_model_name_or_path": str(models["sdxl"]), "max_resolution": "768,768"})
    out = h.model_changed(form(page, config))
    note = out[page.named["model_note"]]
    assert "SDXL model" in note and "1024 px" in note and "768,768" in note
    assert _visible(out[page.named["family_defaults"]])
    assert set(out) == {page.named["model_note"], page.named["family_defaults"]}  # no setting is touched by choosing a model
    applied = by_path(page, h.use_family_defaults(form(page, config)))
    assert applied == {"buckets.max_resolution": "1024,1024", "buckets.min_bucket_reso": 256, "buckets.max_bucket_reso": 2048}


def test_an_sd15_model_at_its_resolution_needs_no_button(page, models):  # noqa: F811
    h = page.handlers["training"]
    out = h.model_changed(form(page, with_values(TrainingConfig(), {"pretrained_model_name_or_path": str(models["sd15"])})))
    assert "SD1.5 model" in out[page.named["model_note"]] and not _visible(out[page.named["family_defaults"]])


def test_a_hub_id_says_nothing_about_a_family(page):  # noqa: F811
    out = page.handlers["training"].model_changed(form(page, TrainingConfig()))
    assert "SDXL" not in out[page.named["model_note"]] and not _visible(out[page.named["family_defaults"]])


def test_the_note_is_korean_on_the_korean_page(tmp_path, models):
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs
    from loratrainer.gui.server import neutralise_gradio_env

    temp = neutralise_gradio_env()
    _, ui = build_page("ko", Jobs(tmp_path / "state"), Display(temp / "display-ko"))
    out = ui.handlers["training"].model_changed(form(ui, with_values(TrainingConfig(), {"pretrained_model_name_or_path": str(models["sdxl"])})))
    assert "SDXL 모델입니다" in out[ui.named["model_note"]]
