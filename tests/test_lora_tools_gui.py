"""Utilities > LoRA tools: the handlers run the real tools in a subprocess, write beside the inputs under a free
name, cancel cleanly, and say bad input and the tools' own errors in the page's language.

Three tests start a real tool process (a run that writes, a tool's error in Korean, cancel); the rest call the
handlers' own code in-process."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from tests.test_lora_tools import make_lora, modules_of, read
from tests.test_lora_tools_inspect import _big_lora, _lycoris


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


def test_every_tool_writes_beside_its_inputs_under_a_free_name(pages, tmp_path):
    """The argument lists the page builds: each output goes into its input's folder, under a name nothing has."""
    h = pages["en"].handlers["lora_tools"]
    lora = tmp_path / "loras" / "style.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"x")
    (tmp_path / "models").mkdir()
    model, base, tuned = (tmp_path / "models" / n for n in ("sd15.safetensors", "base.safetensors", "tuned.safetensors"))
    for p in (model, base, tuned):
        p.write_bytes(b"x")
    (tmp_path / "models" / "folder").mkdir()
    taken = [lora.parent / "style-merged.safetensors", lora.parent / "style-rank8.safetensors",
             model.parent / "sd15-style.safetensors", tuned.parent / "tuned-extracted-rank8.safetensors"]
    for p in taken:
        p.write_bytes(b"mine")
    cases = {
        "merge": (dict(lt_files=f"{lora}\n{lora}:0.5"), lora.parent / "style-merged-2.safetensors"),
        "resize": (dict(lt_file=str(lora), lt_rank=8), lora.parent / "style-rank8-2.safetensors"),
        "merge-into": (dict(lt_model=str(model), lt_files=str(lora)), model.parent / "sd15-style-2.safetensors"),
        "extract": (dict(lt_base=str(base), lt_tuned=str(tuned), lt_rank=8), tuned.parent / "tuned-extracted-rank8-2.safetensors"),
    }
    for tool, (values, expected) in cases.items():
        args, output = h.arguments(h.values(_form(pages["en"], lt_tool=tool, **values)))
        assert output == expected and args[-2:] == ["-o", str(expected)], tool
    args, output = h.arguments(h.values(_form(pages["en"], lt_tool="merge-into", lt_model=str(tmp_path / "models" / "folder"),
                                              lt_files=str(lora))))
    assert output == tmp_path / "models" / "folder-style" and args[-2:] == ["--diffusers", str(output)]
    assert all(p.read_bytes() == b"mine" for p in taken)


def test_the_tab_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, loratrainer.gui.tab_lora_tools; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_tool_runs_in_a_subprocess_and_writes_beside_the_inputs_under_a_free_name(pages, tmp_path):
    """The real path: `python -m loratrainer lora merge ...` started by the handler; the user's own file with the
    name the tool would take is left alone and the result goes under the next free name."""
    h = pages["en"].handlers["lora_tools"]
    a = make_lora(tmp_path / "a.safetensors", 1, dim=4, alpha=2)
    b = make_lora(tmp_path / "b.safetensors", 2, dim=2, alpha=2)
    (tmp_path / "a-merged.safetensors").write_bytes(b"mine")
    form = _form(pages["en"], lt_tool="merge", lt_files=f"{a}:0.5\n{b}", lt_rank=None, lt_precision="float")
    messages = list(h.run(form))
    assert messages[0] == "Starting…"
    assert f"Written: `{tmp_path / 'a-merged-2.safetensors'}`" in messages[-1]
    assert (tmp_path / "a-merged.safetensors").read_bytes() == b"mine"
    assert modules_of(read(tmp_path / "a-merged-2.safetensors")[0]) == modules_of(read(a)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-merged-2.safetensors", "a-merged.safetensors",
                                                          "a.safetensors", "b.safetensors"]


def test_a_tools_own_error_is_said_in_korean(pages, tmp_path):
    """An error found by the tool itself, in its own process (a LyCORIS file given to merge), reaches the Korean
    page as the Korean sentence of its code, not the tool's English."""
    h = pages["ko"].handlers["lora_tools"]
    _lycoris(tmp_path / "loha.safetensors", [("lora_unet_down_blocks_0_attentions_0_proj_in", (32, 32))])
    out = list(h.run(_form(pages["ko"], lt_tool="merge", lt_files=str(tmp_path / "loha.safetensors"))))[-1]
    assert out.startswith("도구가 중단되었습니다: loha.safetensors 은(는) LyCORIS LoHa 파일입니다.")
    assert "LyCORIS의 tools/merge.py" in out and "works on" not in out and "Traceback" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loha.safetensors"]


def test_inspect_report_is_shown_as_a_table(pages, tmp_path):
    """The page's rendering of inspect's JSON report (the report made here in-process: the subprocess path is
    tested above)."""
    from loratrainer.tools.inspection import inspect_lora

    h = pages["en"].handlers["lora_tools"]
    a = make_lora(tmp_path / "a.safetensors", 1, dim=4, alpha=2)
    done = SimpleNamespace(stdout=json.dumps(inspect_lora(a).to_json()), message=None, error_line=lambda: "")
    report = h.result("inspect", 0, done, None)
    assert "| Format | Kohya (lora_down/lora_up) |" in report and "| Rank | 2 ×18, 4 ×73 |" in report  # 3x3 convs at conv_dim; time_emb_proj, conv_shortcut at network_dim
    assert "No problems found." in report and "cat (4)" in report


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


def test_switching_tools_clears_the_answer_and_gives_rank_its_tool_help(pages):
    """Issue 22: the Rank box's help mixed every tool's meaning, and the previous tool's answer stayed."""
    from loratrainer.gui.tab_lora_tools import TOGGLED

    for lang, page in pages.items():
        h = page.handlers["lora_tools"]
        helps = {}
        for tool in ("resize", "merge", "extract"):
            out = h.switch(tool)
            assert out[-1] == ""  # the answer area is cleared
            helps[tool] = out[1 + TOGGLED.index("lt_rank")]["info"]
        assert len(set(helps.values())) == 3, helps
        assert "Merge" not in helps["resize"] and "Resize" not in helps["merge"]
    assert "exact" in pages["en"].handlers["lora_tools"].switch("merge")[1 + TOGGLED.index("lt_rank")]["info"]
