"""scripts/bootstrap.py (what gui.bat and gui.sh run first) against Windows' rules, through its pure functions:
nothing here runs on Windows (this machine has none); gui.bat is read, not run."""

from __future__ import annotations

import importlib.util
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "scripts" / "bootstrap.py")
bootstrap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bootstrap)

STORE = r"C:\Users\김철수\AppData\Local\Microsoft\WindowsApps\PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0\python.exe"


def test_an_old_python_is_refused_in_one_sentence_naming_it():
    problem = bootstrap.python_problem((3, 9, 13, "final", 0), r"C:\Python39\python.exe")
    assert problem and "3.10 or newer" in problem and r"C:\Python39\python.exe is 3.9.13" in problem
    assert bootstrap.python_problem((3, 10, 0), "python") is None and bootstrap.python_problem((3, 13, 1), "py") is None


def test_a_microsoft_store_python_is_recognised_and_a_python_org_one_is_not():
    assert bootstrap.is_store_python(STORE)
    assert bootstrap.is_store_python(STORE.replace("\\", "/"))
    assert not bootstrap.is_store_python(r"C:\Users\김철수\AppData\Local\Programs\Python\Python312\python.exe")
    # the Store's "install me" shortcut has the same folder but no PythonSoftwareFoundation: gui.bat's check runs it
    assert not bootstrap.is_store_python(r"C:\Users\x\AppData\Local\Microsoft\WindowsApps\python.exe")


def test_a_folder_too_deep_for_260_characters_is_refused_unless_long_paths_are_on():
    short = r"C:\Users\김철수\My Documents\loratrainer\.venv"
    assert bootstrap.path_too_long(short, long_paths_enabled=False) is None
    room = bootstrap.WINDOWS_MAX_PATH - len(bootstrap.WINDOWS_SITE_PACKAGES) - bootstrap.DEEPEST_INSTALLED
    just_fits = "C:\\" + "d" * (room - 3)
    assert len(just_fits) == room and bootstrap.path_too_long(just_fits, False) is None
    deep = just_fits + "x"
    problem = bootstrap.path_too_long(deep, False)
    assert problem and "260" in problem and f"at most {room} characters" in problem and "LongPathsEnabled" in problem
    assert bootstrap.path_too_long(deep, long_paths_enabled=True) is None


def test_the_deepest_installed_file_fits_the_allowance():
    """The allowance is measured, not guessed: no installed file of this environment's libraries is deeper."""
    import site

    packages = Path(site.getsitepackages()[0])
    deepest = 0
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "gradio", "safetensors", "psutil"):
        for path in (packages / name).rglob("*"):
            deepest = max(deepest, len(str(path.relative_to(packages))))
    assert 100 < deepest <= bootstrap.DEEPEST_INSTALLED


def test_the_venv_python_is_where_windows_and_posix_put_it(tmp_path):
    venv = tmp_path / "김 철수" / ".venv"
    assert bootstrap.venv_python(venv, windows=True) == venv / "Scripts" / "python.exe"
    assert bootstrap.venv_python(venv, windows=False) == venv / "bin" / "python"


def test_pytorch_comes_from_the_cuda_index_only_on_windows_with_an_nvidia_gpu():
    assert bootstrap.torch_index({}, windows=True, nvidia=True) == bootstrap.CUDA_INDEX
    assert bootstrap.torch_index({}, windows=True, nvidia=False) is None
    assert bootstrap.torch_index({}, windows=False, nvidia=True) is None  # PyPI's Linux wheels carry CUDA
    assert bootstrap.torch_index({"LORATRAINER_TORCH_INDEX": "https://x/cpu"}, True, True) == "https://x/cpu"


def test_main_refuses_an_old_python_before_creating_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bootstrap, "VENV", tmp_path / ".venv")
    monkeypatch.setattr(bootstrap.sys, "version_info", (3, 9, 1, "final", 0))
    monkeypatch.setattr(bootstrap.sys, "argv", ["bootstrap.py"])
    assert bootstrap.main() == 1
    assert "3.10 or newer" in capsys.readouterr().err and not (tmp_path / ".venv").exists()


GUI_BAT = (ROOT / "gui.bat").read_bytes()


def test_gui_bat_keeps_crlf_line_endings():
    assert b"\n" in GUI_BAT and GUI_BAT.count(b"\r\n") == GUI_BAT.count(b"\n")
    assert "*.bat text eol=crlf" in (ROOT / ".gitattributes").read_text(encoding="utf-8")


def test_gui_bat_checks_the_python_it_picks_and_quotes_its_own_folder():
    text = GUI_BAT.decode("ascii")  # ASCII only: cmd.exe reads it in the console's code page
    assert 'pushd "%~dp0"' in text and "cd /d" not in text  # a share (\\server\share) too
    assert 'set "PYTHONUTF8=1"' in text
    # py -3 and then python are each run once before use: a missing py, an old Python or the Store shortcut
    # (which runs nothing) leave PYTHON_BIN undefined and one sentence is said
    assert text.count("sys.version_info >= (3, 10)") == 2 and "if not defined PYTHON_BIN (" in text
    assert text.index("py -3 -c") < text.index("python -c") < text.index("scripts\\bootstrap.py")
    assert '".venv\\Scripts\\loratrainer.exe" gui %*' in text
