"""Starting the GUI: `--language` serving one language at `/`, and the app's API answering a gradio_client (that
building the app loads no torch and no trainer: tests/test_architecture.py)."""

from __future__ import annotations

import os

import pytest


from tests.gui_server import start_gui, stop_gui



def test_forced_language_is_served_at_root(tmp_path):
    from starlette.testclient import TestClient

    from loratrainer.gui.app import create_app
    from loratrainer.gui.server import ServeOptions, neutralise_gradio_env

    temp = neutralise_gradio_env()
    app = create_app(ServeOptions(open_browser=False, language="ko", state_dir=tmp_path), temp_dir=temp)
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        r = client.get("/", follow_redirects=False)
        assert r.status_code == 200
        config = client.get("/config").json()
        labels = [c.get("props", {}).get("label") for c in config["components"]]
        assert "배치 크기" in labels and "Train batch size" not in labels
        assert client.get("/en/", follow_redirects=False).status_code in (404, 405) or "배치 크기" in client.get("/en/config").text


def test_the_app_is_built_with_the_collector_paused_and_it_runs_again_after():
    import gc

    from loratrainer.gui.server import without_gc

    seen = []
    assert without_gc(lambda: seen.append(gc.isenabled()) or "app") == "app"
    assert seen == [False] and gc.isenabled()

    def failing():
        raise RuntimeError("no page")

    with pytest.raises(RuntimeError):
        without_gc(failing)
    assert gc.isenabled()


def test_gradio_client_calls_the_api(tmp_path):
    from gradio_client import Client

    from tests.datasets import make_dataset

    env = {**os.environ, "HOME": str(tmp_path / "home")}
    proc, url = start_gui("--language", "en", env=env, log=tmp_path / "gui.log", timeout=60)
    try:
        client = Client(url, verbose=False)
        api = client.view_api(return_format="dict", print_info=False)
        names = set(api["named_endpoints"])
        assert {"/start", "/stop", "/check_dataset", "/prepare_folders", "/load_preset", "/show_command", "/results", "/caption_folder", "/caption_page"} <= names
        # The Results endpoint with no run yet.
        run, files, samples, paths, summary, *grids = client.predict(None, api_name="/results")
        assert "No run yet" in summary
        # The caption editor's tag count over a generated folder.
        folder = make_dataset(tmp_path / "image", {"10_house": 2}, captions="house, roof") / "10_house"
        tags = client.predict(str(folder), ".txt", api_name="/caption_tags")
        rows = tags["data"] if isinstance(tags, dict) else tags
        assert ["house", 2] in [list(r) for r in rows]
    finally:
        stopped = stop_gui(proc)
    assert stopped, "the GUI did not stop within 20 s of SIGTERM"  # also proves Ctrl+C is not held up by a connected client
