"""Finding a model by hub id: the cache first and quietly, one quick look at the network, then one message."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from loratrainer.caption import hub, wd14
from loratrainer.errors import UserError
from tests.datasets import make_image

MODEL = "someone/some-captioner"


class Loader:
    """A from_pretrained stand-in: cached or not, and it remembers whether it was asked to download."""

    def __init__(self, cached: bool) -> None:
        self.cached, self.downloads = cached, 0

    def __call__(self, name: str, local_files_only: bool = False) -> str:
        if local_files_only:
            if not self.cached:
                raise OSError(f"{name} is not in the cache")
            return f"cached {name}"
        self.downloads += 1
        return f"downloaded {name}"


def _no_network(*args, **kwargs):
    raise AssertionError("the network was asked")


def test_a_cached_model_loads_without_asking_the_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", _no_network)
    loader = Loader(cached=True)
    assert hub.load(MODEL, loader) == f"cached {MODEL}" and loader.downloads == 0


def test_unreachable_hub_is_one_message_without_a_download_attempt(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    loader = Loader(cached=False)
    with pytest.raises(UserError, match="Download it once with network access") as err:
        hub.load(MODEL, loader)
    assert loader.downloads == 0 and "cannot be reached" in str(err.value) and "local folder" in str(err.value)


def test_reachable_hub_downloads_a_model_not_in_the_cache(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    loader = Loader(cached=False)
    assert hub.load(MODEL, loader) == f"downloaded {MODEL}" and loader.downloads == 1


def test_hub_reachable_is_false_at_once_for_a_closed_port(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    assert hub.hub_reachable() is False and time.monotonic() - start < 10


def test_tagger_files_taken_where_the_hub_cache_put_each(monkeypatch, tmp_path):
    import huggingface_hub

    # Two revisions in the cache: the files need not share a snapshot folder.
    places = {wd14.MODEL_FILE: tmp_path / "rev1" / wd14.MODEL_FILE, wd14.TAGS_FILE: tmp_path / "rev2" / wd14.TAGS_FILE}
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: str(places[name]))
    assert wd14.model_files(MODEL) == (places[wd14.MODEL_FILE], places[wd14.TAGS_FILE])


@pytest.mark.parametrize("captioner", ["wd14", "blip"])
def test_cli_without_network_stops_quickly_with_one_line(tmp_path, captioner):
    """No HF_HUB_OFFLINE, an empty cache and a hub name that does not resolve (a machine without network)."""
    make_image(tmp_path / "img" / "a.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_ENDPOINT="https://hub.invalid", HF_HOME=str(tmp_path / "hf-home"))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "loratrainer", "caption", str(tmp_path / "img"), "--captioner",
                           captioner], capture_output=True, text=True, env=env, timeout=300)
    took = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert "Retrying" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] != []
    assert "Download it once" in done.stderr and took < 60
    assert not (tmp_path / "img" / "a.txt").exists()


def test_a_damaged_model_in_the_cache_is_one_message(monkeypatch):
    def damaged(name, local_files_only=False):
        raise ValueError("Error while deserializing header: invalid header length")

    monkeypatch.setattr(hub, "hub_reachable", _no_network)
    with pytest.raises(UserError, match="from the Hugging Face cache .*deserializing.*download it again"):
        hub.load(MODEL, damaged)
