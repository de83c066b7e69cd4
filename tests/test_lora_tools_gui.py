"""Utilities > LoRA tools: the handlers run the real tools in a subprocess, write beside the inputs under a free
name, cancel cleanly, and say bad input in the page's language."""

from __future__ import annotations

import threading
import time

import pytest

from tests.test_lora_tools import make_lora, read
from tests.test_lora_tools_inspect import _big_lora


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    from loratrainer.gui.server import neutralise_gradio_env

    neutralise_gradio_env()
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    state, temp = tmp_path_factory.mktemp("state"), tmp_path_factory.mktemp("temp")
    return {lang: build_page(lang, Jobs(state), Display(temp / "display"))[1] for lang in ("en", "ko")}


def _form(page, **values):
    from loratrainer.gui.tab_lora_tools import KEYS

    defaults = {"lt_tool": "inspect", "lt_dynamic": "none", "lt_param": 0.9, "lt_min_diff": 0.01, "lt_precision": "auto",
                "lt_diffusers": False}
    return {page.named[k]: values.get(k, defaults.get(k)) for k in KEYS}


def test_bad_input_is_one_sentence_in_the_page_language(pages, tmp_path):
    en, ko = pages["en"].handlers["lora_tools"], pages["ko"].handlers["lora_tools"]
    missing = str(tmp_path / "nope.safetensors")
    assert list(en.run(_form(pages["en"], lt_file=""))) == ["**Error:** LoRA file is empty; enter a path."]
    assert "LoRA 파일" in list(ko.run(_form(pages["ko"], lt_file=missing)))[-1]
    (a := make_lora(tmp_path / "a.safetensors", 1, dim=2, alpha=1))
    out = list(en.run(_form(pages["en"], lt_tool="resize", lt_file=str(a))))
    assert out == ["**Error:** Resize needs a rank or a dynamic rank rule."]
    out = list(en.run(_form(pages["en"], lt_tool="merge", lt_files=f"{a}\n{tmp_path / 'b.safetensors'}:0.5")))
    assert "LoRA files" in out[-1] and "b.safetensors does not exist" in out[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_the_tab_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, loratrainer.gui.tab_lora_tools; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_inspect_and_merge_run_in_a_subprocess_and_write_beside_the_inputs(pages, tmp_path):
    h = pages["en"].handlers["lora_tools"]
    a = make_lora(tmp_path / "a.safetensors", 1, dim=4, alpha=2)
    b = make_lora(tmp_path / "b.safetensors", 2, dim=2, alpha=2)
    report = list(h.run(_form(pages["en"], lt_file=str(a))))[-1]
    assert "| Format | Kohya (lora_down/lora_up) |" in report and "| Rank | 2 ×18, 4 ×60 |" in report and "No problems found." in report
    form = _form(pages["en"], lt_tool="merge", lt_files=f"{a}:0.5\n{b}", lt_rank=None, lt_precision="float")
    first = list(h.run(form))[-1]
    second = list(h.run(form))[-1]  # the same job again: a free name, the first result untouched
    assert f"Written: `{tmp_path / 'a-merged.safetensors'}`" in first
    assert f"Written: `{tmp_path / 'a-merged-2.safetensors'}`" in second
    assert read(tmp_path / "a-merged.safetensors")[0].keys() == read(tmp_path / "a-merged-2.safetensors")[0].keys()


def test_cancel_stops_the_tool_and_leaves_no_file(pages, tmp_path):
    h = pages["en"].handlers["lora_tools"]
    big = _big_lora(tmp_path / "big.safetensors")
    messages = []
    form = _form(pages["en"], lt_tool="merge", lt_files=f"{big}\n{big}:0.5", lt_rank=8)
    worker = threading.Thread(target=lambda: messages.extend(h.run(form)))
    worker.start()
    deadline = time.monotonic() + 120
    while not any(m.startswith("Working") for m in messages) and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
    assert h.cancel() == "Cancelling…"
    worker.join(60)
    assert messages[-1] == "Cancelled: no file was written."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]
    assert h.cancel() == "No LoRA tool is running."


def test_a_path_the_file_system_refuses_is_a_sentence_not_a_traceback(pages):
    h = pages["en"].handlers["lora_tools"]
    out = list(h.run(_form(pages["en"], lt_tool="merge", lt_files="x" * 5000 + ".safetensors")))
    assert len(out) == 1 and out[0].startswith("**Error:**") and "Traceback" not in out[0]
