"""How the form shows a setting comes from the schema's field (label, help, Basic or Advanced, multi-line, file
browser, path check), so a new setting touches the schema, the Korean table and the code that uses it only."""

from __future__ import annotations

import pytest

from loratrainer.config import field_specs


@pytest.fixture(scope="module")
def page_config(tmp_path_factory):
    from loratrainer.gui.server import neutralise_gradio_env

    neutralise_gradio_env()
    from loratrainer.gui.app import build_blocks
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    tmp = tmp_path_factory.mktemp("hints")
    return build_blocks("en", Jobs(tmp / "state"), Display(tmp / "display")).get_config_file()


def by_elem_id(config: dict) -> dict:
    return {c["props"]["elem_id"]: c for c in config["components"] if c.get("props", {}).get("elem_id")}


def test_every_path_setting_has_a_file_browser(page_config):
    """vae, network_weights and resume had none: the list of path fields was never used."""
    ids = by_elem_id(page_config)
    browsed = [s for s in field_specs() if s.browse]
    assert {s.path for s in browsed} >= {"model.vae", "network.network_weights", "saving.resume", "folders.train_data_dir"}
    for spec in browsed:
        key = spec.check or spec.name
        assert f"browse-{key}" in ids and f"browse-{key}-entries" in ids, spec.path
        entries = ids[f"browse-{key}-entries"]["props"]["label"]
        assert ("file" in entries.lower()) == (spec.browse in ("model", "file")), (spec.path, entries)


def test_labels_help_and_lines_come_from_the_schema(page_config):
    ids = by_elem_id(page_config)
    for spec in field_specs():
        props = ids["field-" + spec.path.replace(".", "-")]["props"]
        assert props["label"] == spec.label and props["info"] == spec.help, spec.path
        if spec.lines > 1:
            assert props["lines"] == spec.lines, spec.path


def test_basic_settings_are_in_the_schema_s_order():
    from loratrainer.gui.form import basic_paths

    basic = basic_paths()
    assert basic[0] == "model.pretrained_model_name_or_path" and basic[-1] == "sampling.sample_prompts"
    assert len(basic) == len(set(basic)) == 20
