"""Captioner options are declared once (caption/base.py) and both front ends follow: `loratrainer caption`
has a flag for every option with CLI help, and with no flags gives each captioner its declared defaults; the
Utilities tab has a box for every option with a label, showing the declared default."""

from __future__ import annotations

import argparse

import pytest

from loratrainer.caption.base import METHODS, MODEL_METHODS, BlipOptions, GitOptions, TaggerOptions, option_specs
from loratrainer.cli import caption as cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["caption", "DIR", *argv])


@pytest.mark.parametrize("method", MODEL_METHODS)
def test_no_flags_give_the_declared_defaults(method):
    assert cli.captioner_options(parse("--captioner", method)) == METHODS[method]()


def test_every_option_with_cli_help_has_its_flag():
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    text = parser._subparsers._group_actions[0].choices["caption"].format_help()
    for method in MODEL_METHODS:
        for spec in option_specs(METHODS[method]):
            if spec.cli:
                assert spec.flag in text, spec.flag


def test_flags_reach_the_options_as_before():
    assert cli.captioner_options(parse("--no-beam-search", "--top-p", "0.5", "--max-length", "9")) == BlipOptions(
        beam_search=False, top_p=0.5, max_length=9)
    assert cli.captioner_options(parse("--captioner", "git", "--max-length", "9", "--model", "m")) == GitOptions(model="m", max_length=9)
    tagger = cli.captioner_options(parse("--captioner", "wd14", "--thresholds", "0.2", "0.7", "--undesired-tags", "a, b,,c",
                                         "--keep-underscores", "--include-rating", "--tag-separator", " "))
    assert tagger == TaggerOptions(general_threshold=0.2, character_threshold=0.7, undesired_tags=("a", "b", "c"),
                                   replace_underscores=False, include_rating=True, tag_separator=" ")
    assert cli.captioner_options(parse("--basic", "a dog")) == METHODS["fixed"]("a dog")


def test_the_utilities_tab_has_a_box_per_labelled_option(tmp_path):
    from loratrainer.gui.server import neutralise_gradio_env

    neutralise_gradio_env()
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs
    from loratrainer.gui.tab_utilities import option_key

    _, ui = build_page("en", Jobs(tmp_path / "state"), Display(tmp_path / "display"))
    for method, cls in METHODS.items():
        for spec in option_specs(cls):
            if spec.label:
                box = ui.named[option_key(method, spec.name)]
                shown = ", ".join(spec.default) if spec.kind == "tags" else spec.default
                assert box.value == shown and box.label == ui.t(spec.label), (method, spec.name)
