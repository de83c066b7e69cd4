"""A rented GPU machine (docs/remote.md): the container recipe installs and starts only through the README's own
command, and `--public-name` lets a browser reach --listen by an address the machine does not know itself (NAT,
a container's port mapping) without opening the host check to any name. Docker is not run here (there is none)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from loratrainer.errors import UserError
from loratrainer.gui.server import ServeOptions, allowed_hosts, validate

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
INSTRUCTIONS = [line for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines() if line.strip() and not line.startswith("#")]


def _readme_commands() -> list[str]:
    """The commands of the README's set-up section (its fenced blocks before the next heading)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```\n(.*?)```", setup, re.S) for line in block.splitlines() if line.strip()]


def test_the_container_installs_and_starts_with_the_readmes_command():
    assert "./gui.sh" in _readme_commands()
    runs = [i.split(None, 1)[1] for i in INSTRUCTIONS if i.startswith("RUN ")]
    # the install is ./gui.sh itself (its bootstrap), and nothing else installs Python packages
    assert "./gui.sh --help" in runs
    for command in runs:
        assert not re.search(r"\bpip3?\b|requirements|setup\.py|conda|uv ", command), command
    cmd = [i for i in INSTRUCTIONS if i.startswith("CMD ")]
    assert len(cmd) == 1 and not any(i.startswith("ENTRYPOINT") for i in INSTRUCTIONS)
    argv = shlex.split(eval(cmd[0][4:])[2])  # ["sh", "-c", "exec ./gui.sh ..."]: a JSON list, valid Python too
    assert argv[:2] == ["exec", "./gui.sh"]
    assert argv[argv.index("--listen") + 1] == "0.0.0.0" and "--no-browser" in argv
    assert argv[argv.index("--username") + 1] == "$LORATRAINER_GUI_USERNAME" and "--password" not in argv


def test_the_container_is_built_from_a_cuda_runtime_image_and_runs_as_a_user():
    base = [i for i in INSTRUCTIONS if i.startswith("FROM ")]
    assert len(base) == 1 and re.match(r"FROM nvidia/cuda:[\d.]+-runtime-ubuntu", base[0])
    assert any(i.startswith("USER ") and "root" not in i for i in INSTRUCTIONS)
    assert ".venv" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def test_gui_sh_is_what_the_container_runs_and_it_bootstraps_first():
    text = (ROOT / "gui.sh").read_text(encoding="utf-8")
    assert text.index("scripts/bootstrap.py") < text.index("exec .venv/bin/loratrainer gui \"$@\"")


def test_docs_remote_gives_both_safe_ways_with_commands():
    doc = (ROOT / "docs" / "remote.md").read_text(encoding="utf-8")
    assert "ssh -N -L 7860:127.0.0.1:7860" in doc and "--listen 0.0.0.0 --username" in doc
    assert "plain HTTP" in doc and "LORATRAINER_GUI_PASSWORD" in doc and "docker build" in doc


def test_a_public_name_is_answered_with_listen_only():
    options = ServeOptions(host="0.0.0.0", username="a", password="b", public_names=("203.0.113.7", "box.example"))
    validate(options)
    hosts = allowed_hosts(options)
    assert {"203.0.113.7", "box.example", "127.0.0.1"} <= set(hosts) and "evil.example" not in hosts
    assert "203.0.113.7" not in allowed_hosts(ServeOptions(host="0.0.0.0", username="a", password="b"))
    with pytest.raises(UserError, match="--public-name is for --listen"):
        validate(ServeOptions(public_names=("203.0.113.7",)))
    for bad in ("http://box.example", "box.example:7860", "*", ""):
        with pytest.raises(UserError, match="--public-name"):
            validate(ServeOptions(host="0.0.0.0", username="a", password="b", public_names=(bad,)))
    validate(ServeOptions(host="::", username="a", password="b", public_names=("2001:db8::7",)))


def test_the_cli_takes_public_names_from_flags_or_the_environment(monkeypatch):
    from loratrainer.cli import gui as gui_cli
    from loratrainer.gui import server

    seen = []
    monkeypatch.setattr(server, "serve", lambda options, create_app: seen.append(options) or 0)
    parser = argparse.ArgumentParser()
    gui_cli.add_parser(parser.add_subparsers())
    monkeypatch.setenv("LORATRAINER_GUI_PASSWORD", "pw")
    monkeypatch.setenv("LORATRAINER_GUI_PUBLIC_NAMES", "203.0.113.7, box.example")
    args = parser.parse_args(["gui", "--listen", "0.0.0.0", "--username", "me"])
    assert args.run(args) == 0 and seen[-1].public_names == ("203.0.113.7", "box.example") and seen[-1].auth == ("me", "pw")
    args = parser.parse_args(["gui", "--listen", "0.0.0.0", "--username", "me", "--public-name", "x.example"])
    assert args.run(args) == 0 and seen[-1].public_names == ("x.example",)


def test_an_empty_user_name_from_the_container_refuses_to_start(monkeypatch):
    """`--username "$LORATRAINER_GUI_USERNAME"` with the variable unset: no login, so no --listen."""
    monkeypatch.setenv("LORATRAINER_GUI_PASSWORD", "pw")
    with pytest.raises(UserError):
        validate(ServeOptions(host="0.0.0.0", username="", password=None))
