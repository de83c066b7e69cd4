"""The second page language is built at its first request (gui/later_language.py): the GUI answers sooner, and
that page then works as the first does (its labels, its events through Gradio's queue), behind the same guards."""

from __future__ import annotations

import asyncio
import json

import pytest

from loratrainer.gui.later_language import LaterLanguages, PageBuilds, locale_language


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from starlette.testclient import TestClient

    from loratrainer.gui.app import create_app
    from loratrainer.gui.server import ServeOptions, neutralise_gradio_env

    temp = neutralise_gradio_env()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LC_ALL", "en_US.UTF-8")  # English first, as on most machines
        app = create_app(ServeOptions(open_browser=False, state_dir=tmp_path_factory.mktemp("state")), temp_dir=temp)
    later = next(m.kwargs["later"] for m in app.user_middleware if "later" in m.kwargs)
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        yield client, later
    # the server's shutdown ended the later page too (its lifespan: Gradio's queue and startup events)
    assert later.tasks and all(task.done() and not task.exception() for task in later.tasks)


def _result(client, lang: str, api_name: str, data: list) -> list:
    """An event through the page's queue, as gradio_client sends it."""
    event = client.post(f"/{lang}/gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
    stream = client.get(f"/{lang}/gradio_api/call/{api_name}/{event}").text
    lines = stream.splitlines()
    assert "event: complete" in lines, stream
    return json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))


def test_the_other_language_is_built_at_its_first_request_and_then_works(served):
    client, later = served
    assert later.languages == ["ko"] and not later.apps
    assert "Train batch size" in client.get("/en/config").text
    assert not later.apps  # the English page did not build the Korean one
    config = client.get("/ko/config").json()
    labels = [c.get("props", {}).get("label") for c in config["components"]]
    assert "배치 크기" in labels and "Train batch size" not in labels and list(later.apps) == ["ko"]
    page = client.get("/ko/")
    assert page.status_code == 200 and b'"ko"' in page.content  # the page-language script reaches it too
    summary = _result(client, "ko", "results", [None])
    assert any("아직" in str(v) for v in summary), summary  # "No run yet" in Korean, answered by its own queue
    assert any("No run yet" in str(v) for v in _result(client, "en", "results", [None]))


def test_the_later_page_is_behind_the_same_guards(served):
    client, _ = served
    assert client.get("/ko/config", headers={"Host": "evil.example"}).status_code == 400
    assert client.post("/ko/gradio_api/call/results", json={"data": [None]}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.get("/ko/gradio_api/file=http://169.254.169.254/x").status_code == 403


def test_a_page_is_built_only_while_no_handler_runs():
    """Gradio keeps the page being built in process-wide globals: a component a handler made meanwhile would land in
    it. A build waits for the handler under way, and a handler that comes during the build waits for it."""
    builds, order = PageBuilds(), []

    async def handler(name: str, seconds: float):
        async with builds.handler():
            order.append(f"{name} starts")
            await asyncio.sleep(seconds)
            order.append(f"{name} ends")

    async def main():
        first = asyncio.create_task(handler("a", 0.1))
        await asyncio.sleep(0.02)
        build = asyncio.create_task(builds.build(lambda: order.append("build")))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(handler("b", 0))
        await asyncio.gather(first, build, second)

    asyncio.run(main())
    assert order == ["a starts", "a ends", "build", "b starts", "b ends"]


def test_a_later_page_that_fails_to_start_fails_its_request_and_is_tried_again():
    calls = []

    class Broken:
        class router:
            @staticmethod
            def lifespan_context(app):
                calls.append("start")
                raise RuntimeError("no queue")

    later = LaterLanguages(lambda lang: Broken(), ["ko"])

    async def main():
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await later.app_for("ko")

    asyncio.run(main())
    assert calls == ["start", "start"] and not later.apps


def test_the_page_built_first_is_the_machines_locale_language():
    assert locale_language({"LANG": "ko_KR.UTF-8"}) == "ko"
    assert locale_language({"LC_ALL": "en_US.UTF-8", "LANG": "ko_KR.UTF-8"}) == "en"
    assert locale_language({}) == "en"
