"""Every sentence a user can see is a coded message (loratrainer/messages.py) with a Korean text: a scan of the
source refuses an error made from a plain English string, and errors that used to reach the Korean page in
English (an SD1.x checkpoint missing parts, a broken config or Kohya file, the web guards' 403/413 bodies) are
said in Korean."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

from loratrainer.gui.i18n import Translator

PACKAGE = Path(__file__).resolve().parent.parent / "loratrainer"
HANGUL = re.compile(r"[\uac00-\ud7a3]")
# The parameter of an error's constructor that holds what is said (UserError's `message`, ImageError's `reason`).
MESSAGE_PARAMS = ("message", "reason", "msg", "text")
# Deliberate exceptions, each with its reason:
ALLOWED = {
    # pydantic's English line for the CLI; the page says each bad value from `fields` in its language
    "FormError": "fields",
}


def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def _error_classes(trees) -> dict[str, int | None]:
    """Every UserError/MsgError subclass of the package -> the position of its message among the constructor's
    positional arguments (None where it takes none: it builds its own coded message)."""
    classes = {n.name: n for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.ClassDef)}

    def bases(name):
        return [ast.unparse(b).split(".")[-1] for b in classes[name].bases] if name in classes else []

    def is_error(name, seen=()):
        return name in ("UserError", "MsgError") or any(is_error(b, seen + (name,)) for b in bases(name) if b not in seen)

    def position(name):
        node = classes.get(name)
        init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None) if node else None
        if init is None:
            parents = [b for b in bases(name) if is_error(b)]
            return position(parents[0]) if parents and parents[0] in classes else 0
        names = [a.arg for a in init.args.args[1:]]
        return next((i for i, a in enumerate(names) if a in MESSAGE_PARAMS), None)

    return {name: position(name) for name in classes if is_error(name)}


def _is_text(node: ast.AST) -> bool:
    """An expression that is English text by its syntax: a string, an f-string, text glued with +, str(...) or
    "...".format(...)/.join(...) (a coded message is Msg.of(...) or a function returning one)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_text(node.left) or _is_text(node.right)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id == "str":
            return True
        if isinstance(func, ast.Attribute) and func.attr in ("format", "join") and _is_text(func.value):
            return True
    return False


def _plain_text_errors() -> list[str]:
    trees = _trees()
    errors = _error_classes(trees)
    found = []
    for path, tree in trees.items():
        where = path.relative_to(PACKAGE.parent)
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name in errors]:
            for call in ast.walk(cls):  # an error class's own super().__init__("...")
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "__init__"
                        and call.args and _is_text(call.args[0]) and cls.name not in ALLOWED and cls.name != "MsgError"):
                    found.append(f"{where}:{call.lineno}: {ast.unparse(call)[:120]}")
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            name = call.func.id if isinstance(call.func, ast.Name) else call.func.attr if isinstance(call.func, ast.Attribute) else None
            if name not in errors or name in ALLOWED:
                continue
            index = errors[name]
            said = [call.args[index]] if index is not None and index < len(call.args) else []
            said += [k.value for k in call.keywords if k.arg in MESSAGE_PARAMS]
            if any(_is_text(s) for s in said):
                found.append(f"{where}:{call.lineno}: {ast.unparse(call)[:120]}")
    return found


def test_no_error_a_user_sees_is_made_from_plain_english():
    """`raise UserError("...")` (or any of its subclasses with a string, an f-string or str(...)) would reach the
    Korean page in English: say it with a code (define + Msg.of) and its Korean text in ko.json."""
    assert len(_error_classes(_trees())) > 20  # UserError, MsgError and their subclasses across the package
    assert _plain_text_errors() == []


def test_the_scan_finds_a_plain_english_error(tmp_path, monkeypatch):
    """The scan is not vacuous: each way of writing English text is caught, a coded message passes."""
    module = tmp_path / "loratrainer"
    module.mkdir()
    (module / "errors.py").write_text("class UserError(Exception):\n    def __init__(self, message='', *, path=None): ...\n")
    (module / "bad.py").write_text(
        "class MyError(UserError):\n    pass\n"
        "def f(x, p):\n"
        "    raise UserError('literal')\n"
        "    raise MyError(f'{x} is wrong')\n"
        "    raise UserError('a: ' + x)\n"
        "    raise UserError(str(x), path=p)\n"
        "    raise UserError(Msg.of('code', x=x))\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", module)
    found = _plain_text_errors()
    assert [line.split(":")[1] for line in found] == ["4", "5", "6", "7"], found


def test_the_web_guards_say_their_refusals_in_the_pages_language():
    """The 403 and 413 bodies follow the page that asked (its /ko/ path, else Accept-Language)."""
    from loratrainer.gui.web_guards import OriginGuard, UploadLimit

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the guard let it through")

    def body(guard, path, headers):
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "POST", "path": path, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        asyncio.run(guard(scope, receive, send))
        assert sent[0]["status"] in (403, 413)
        return json.loads(sent[1]["body"])["detail"]

    big = {"content-length": str(100 * 1024 * 1024), "host": "127.0.0.1:7860"}
    assert body(UploadLimit(app), "/ko/gradio_api/upload", big) == "4 MB보다 큰 업로드는 거부되었습니다."
    assert body(UploadLimit(app), "/gradio_api/upload", {**big, "accept-language": "ko-KR,ko;q=0.9"}).startswith("4 MB보다")
    assert body(UploadLimit(app), "/en/gradio_api/upload", big) == "Upload larger than 4 MB refused."
    foreign = {"origin": "http://evil.example", "host": "127.0.0.1:7860"}
    assert HANGUL.search(body(OriginGuard(app), "/ko/gradio_api/queue/join", foreign))
    assert body(OriginGuard(app), "/en/gradio_api/queue/join", foreign) == "Cross-origin request refused."


def test_an_sd1_checkpoint_without_its_parts_is_said_in_korean_including_the_parts():
    """The parts a checkpoint lacks were English words joined with " and " inside the Korean sentence."""
    torch = pytest.importorskip("torch")
    from loratrainer.model.checkpoint import check_sd15
    from loratrainer.model.errors import NotSD15Checkpoint
    from loratrainer.model.families import UNET

    state = {UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(2, 768)}
    with pytest.raises(NotSD15Checkpoint) as caught:
        check_sd15(state, "unet-only.safetensors")
    assert str(caught.value) == "unet-only.safetensors is an SD1.x checkpoint without its text encoder and VAE weights; use a full model file."
    korean = Translator("ko").error_text(caught.value)
    assert "텍스트 인코더 및 VAE" in korean and "text encoder" not in korean and " and " not in korean, korean


def test_a_broken_config_and_a_bad_kohya_file_are_said_in_korean(tmp_path):
    from loratrainer.config import ConfigError, load_config
    from loratrainer.config.kohya import import_kohya

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError) as caught:
        load_config(broken)
    assert "not valid JSON (line 1" in str(caught.value)
    assert "올바른 JSON이 아닙니다" in Translator("ko").error_text(caught.value)

    with pytest.raises(ConfigError) as caught:
        import_kohya({"LoRA_type": "Standard", "epoch": "many", "cache_latents": "maybe"}, source="kohya.json")
    english, korean = str(caught.value), Translator("ko").error_text(caught.value)
    assert "epoch: expected a number (got 'many')" in english and "cache_latents: expected true or false" in english
    assert "숫자여야 합니다" in korean and "true 또는 false여야 합니다" in korean, korean
    assert "expected" not in korean, korean


def test_the_cli_prints_the_same_messages_in_english(capsys, tmp_path):
    """The codes change nothing for the CLI: `error: ` and the English sentence, exit code 2."""
    from loratrainer.cli import main

    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "dest"), "--name", "a/b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "use a plain name without" in err and not HANGUL.search(err)


PLACEHOLDER = re.compile(r"\{[^}]*\}")
TWO_WORDS = re.compile(r"\b[A-Za-z]{2,}[,:;]?\s+[A-Za-z]{2,}\b")


def _literal_text(node: ast.AST) -> str | None:
    """The literal words of a string, f-string or + of them (placeholders left out); None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return " ".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp):
        return " ".join(t for t in (_literal_text(node.left), _literal_text(node.right)) if t)
    return None


def test_the_cli_prints_no_sentence_of_its_own():
    """`loratrainer ...` prints coded messages (print(Msg.of(...))): a literal sentence of two English words or
    more in a print() of cli/ is refused. Data (JSON, a report's own lines, a command line) passes."""
    found = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print" and call.args:
                text = _literal_text(call.args[0])
                if text and TWO_WORDS.search(PLACEHOLDER.sub(" ", text)):
                    found.append(f"{path.name}:{call.lineno}: {ast.unparse(call)[:100]}")
    assert found == []
    assert TWO_WORDS.search(PLACEHOLDER.sub(" ", _literal_text(ast.parse('f"removed {n} run(s)"').body[0].value)))
