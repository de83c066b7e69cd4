"""The web interface's security promises (docs/reliability.md, "The web interface"): loopback by default, no share
link whatever the environment says, Host header checked (DNS rebinding), file routes limited to what the app
made for display."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.gui_server import start_gui, stop_gui

from loratrainer.errors import UserError
from loratrainer.gui.server import ServeOptions, allowed_hosts, neutralise_gradio_env, validate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The real app (both languages) in-process, with its own state folder and Gradio temp folder."""
    temp = neutralise_gradio_env()
    state = tmp_path_factory.mktemp("gui-state")
    from starlette.testclient import TestClient

    from loratrainer.gui.app import create_app

    app = create_app(ServeOptions(open_browser=False, state_dir=state), temp_dir=temp)
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        yield client, state, temp


def test_foreign_host_header_gets_400_and_starts_nothing(served, tmp_path):
    client, state, _ = served
    assert client.get("/en/").status_code == 200
    for path in ("/", "/en/", "/ko/", "/en/config", "/en/gradio_api/info"):
        r = client.get(path, headers={"host": "evil.example"}, follow_redirects=False)
        assert r.status_code == 400, path
    # The start endpoint, as a DNS-rebinding page would call it.
    r = client.post("/en/gradio_api/call/start", json={"data": []}, headers={"host": "evil.example:7860"})
    assert r.status_code == 400
    r = client.post("/en/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"}, headers={"host": "evil.example"})
    assert r.status_code == 400
    assert not (state / "gui-runs.json").exists()  # no run was started or remembered


def test_loopback_names_are_served(served):
    client, _, _ = served
    for host in ("127.0.0.1:7860", "localhost:7860"):
        assert client.get("/en/", headers={"host": host}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/en/gradio_api/file=/etc/passwd",
        "/ko/gradio_api/file=/etc/passwd",
        "/gradio_api/file=/etc/passwd",
        "/en/gradio_api/file=../../../../../../etc/passwd",
        "/en/gradio_api/file=%2Fetc%2Fpasswd",
        "/en/gradio_api/file=http://169.254.169.254/latest/meta-data/",
        "/en/gradio_api/file=" + str(ROOT / "pyproject.toml"),  # the working directory is not served either
    ],
)
def test_file_route_refuses_what_the_app_did_not_make(served, path):
    client, _, _ = served
    r = client.get(path)
    assert r.status_code in (403, 404), (path, r.status_code)
    assert "root:" not in r.text


def test_file_route_serves_display_files(served, tmp_path):
    from PIL import Image

    client, _, temp = served
    from loratrainer.gui.display import Display

    source = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(source)
    thumb = Display(temp / "display").thumbnail(source)
    assert thumb and Path(thumb).is_relative_to(temp)
    r = client.get(f"/en/gradio_api/file={thumb}")
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
    # ...but never the user's original next to it.
    assert client.get(f"/en/gradio_api/file={source}").status_code in (403, 404)


def test_listen_beyond_loopback_requires_credentials():
    validate(ServeOptions())
    validate(ServeOptions(host="127.0.0.2"))
    with pytest.raises(UserError, match="--username and --password"):
        validate(ServeOptions(host="0.0.0.0"))
    with pytest.raises(UserError):
        validate(ServeOptions(host="192.168.1.5", username="a"))
    validate(ServeOptions(host="0.0.0.0", username="a", password="b"))


def test_allowed_hosts_are_the_served_address():
    assert "evil.example" not in allowed_hosts(ServeOptions())
    assert set(allowed_hosts(ServeOptions())) >= {"127.0.0.1", "localhost"}
    lan = allowed_hosts(ServeOptions(host="192.168.1.5", username="a", password="b"))
    assert "192.168.1.5" in lan and "127.0.0.1" not in lan and "evil.example" not in lan
    assert "127.0.0.1" in allowed_hosts(ServeOptions(host="0.0.0.0", username="a", password="b"))


def test_gradio_environment_is_neutralised():
    env = {"GRADIO_SHARE": "True", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_ALLOWED_PATHS": "/", "PATH": "/bin"}
    temp = neutralise_gradio_env(env)
    assert "GRADIO_SHARE" not in env and "GRADIO_SERVER_NAME" not in env and "GRADIO_ALLOWED_PATHS" not in env
    assert env["PATH"] == "/bin" and env["GRADIO_TEMP_DIR"] == str(temp) and temp.is_dir()


def test_cli_refuses_listen_without_credentials_before_importing_gradio():
    code = (
        "import sys; from loratrainer.cli import main; rc = main(['gui', '--listen', '0.0.0.0', '--no-browser']);"
        "print('GRADIO', 'gradio' in sys.modules); sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert "--username and --password" in r.stderr
    assert "GRADIO False" in r.stdout


def test_real_server_ignores_share_env_and_stays_on_loopback(tmp_path):
    """`loratrainer gui` with GRADIO_SHARE=True and GRADIO_SERVER_NAME=0.0.0.0 in the environment: still only
    127.0.0.1, no share tunnel, Host checked."""
    env = {**os.environ, "GRADIO_SHARE": "True", "GRADIO_SERVER_NAME": "0.0.0.0", "HOME": str(tmp_path)}
    proc, url = start_gui("--language", "en", env=env, log=tmp_path / "gui.log", timeout=60)
    try:
        listening = [c for c in _listening_sockets(proc.pid)]
        assert listening and all(addr.startswith("127.0.0.1") for addr in listening), listening
        req = urllib.request.Request(url, headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400
        with urllib.request.urlopen(url + "config", timeout=5) as r:
            config = json.loads(r.read())
        assert not config.get("share_url")
    finally:
        stop_gui(proc, timeout=15)
    assert "gradio.live" not in (tmp_path / "gui.log").read_text()


def _listening_sockets(pid: int) -> list[str]:
    """Local addresses of the process's listening TCP sockets (Linux /proc), e.g. ['127.0.0.1:7860']."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc")
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                hex_ip, hex_port = cols[1].split(":")
                if len(hex_ip) == 8:
                    ip = socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1])
                else:
                    ip = "ipv6:" + hex_ip
                out.append(f"{ip}:{int(hex_port, 16)}")
    return out


def test_listen_with_credentials_requires_login(tmp_path):
    from starlette.testclient import TestClient

    from loratrainer.gui.app import create_app

    temp = neutralise_gradio_env()
    options = ServeOptions(host="0.0.0.0", username="ann", password="s3cret", language="en", open_browser=False, state_dir=tmp_path)
    with TestClient(create_app(options, temp_dir=temp), base_url="http://127.0.0.1:7860") as client:
        assert client.get("/config").status_code == 401
        r = client.post("/login", data={"username": "ann", "password": "wrong"})
        assert r.status_code == 400
        r = client.post("/login", data={"username": "ann", "password": "s3cret"})
        assert r.status_code == 200
        assert client.get("/config").status_code == 200
        assert client.get("/config", headers={"host": "evil.example"}).status_code == 400


# -- Gradio's own routes, checked against the installed gradio (6.x) ---------------------------------------------

EVERY_KIND_OF_ROUTE = [
    ("GET", "/en/gradio_api/queue/data?session_hash=x"),  # the SSE stream gradio 6 answers events on
    ("POST", "/en/gradio_api/queue/join"),
    ("POST", "/en/gradio_api/upload"),
    ("GET", "/en/gradio_api/heartbeat/x"),
    ("GET", "/en/gradio_api/file=/etc/passwd"),
    ("GET", "/en/gradio_api/file/etc/passwd"),
    ("GET", "/en/gradio_api/proxy=https://example.com/x"),
    ("GET", "/en/static/img/logo.svg"),
    ("GET", "/en/assets/index.js"),
    ("GET", "/en/theme.css"),
    ("GET", "/en/favicon.ico"),
    ("GET", "/en/gradio_api/startup-events"),
    ("POST", "/en/login"),
    ("GET", "/ko/gradio_api/queue/data?session_hash=x"),
    ("GET", "/file=/etc/passwd"),
]


@pytest.mark.parametrize("method,path", EVERY_KIND_OF_ROUTE)
def test_foreign_host_gets_400_on_every_route(served, method, path):
    client, state, _ = served
    r = client.request(method, path, headers={"host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 400, (path, r.status_code)
    assert not (state / "gui-runs.json").exists()


def test_foreign_host_websocket_is_refused(served):
    from starlette.websockets import WebSocketDisconnect

    client, _, _ = served
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/en/gradio_api/queue/data", headers={"host": "evil.example"}) as ws:
            ws.receive_text()


def test_symlink_in_the_served_folder_pointing_outside_is_refused(served, tmp_path):
    client, _, temp = served
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    link = temp / "display" / "link.png"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    dir_link = temp / "display" / "outside"
    dir_link.symlink_to(tmp_path, target_is_directory=True)
    for path in (link, dir_link / "secret.png", "/etc/passwd"):
        r = client.get(f"/en/gradio_api/file={path}")
        assert r.status_code in (403, 404), (path, r.status_code)
        assert b"PNG secret" not in r.content


def test_upload_is_served_back_but_cannot_escape(served):
    """Gradio's upload route writes into the app's private temp folder (a Kohya config the user uploads); the
    file route serves that copy, and a crafted file name stays inside the folder."""
    client, _, temp = served
    r = client.post("/en/gradio_api/upload", files=[("files", ("../../../../evil.json", b'{"a": 1}', "application/json"))])
    assert r.status_code == 200, r.text
    (saved,) = r.json()
    assert Path(saved).resolve().is_relative_to(temp.resolve()) and Path(saved).name == "evil.json"
    got = client.get(f"/en/gradio_api/file={saved}")
    assert got.status_code == 200 and got.content == b'{"a": 1}'
    assert client.get("/en/gradio_api/file=" + str(Path(saved).parent / ".." / ".." / ".." / "etc" / "passwd")).status_code in (403, 404)


@pytest.mark.parametrize(
    "path",
    [
        "/en/gradio_api/file/https://example.com/a.png",  # the legacy route, like file=, fetches URLs server-side
        "/en/gradio_api/file/http://169.254.169.254/latest/meta-data/",
        "/ko/gradio_api/file/HTTP://example.com/a.png",
        "/en/gradio_api/file=https://example.com/a.png",
        "/en/gradio_api/file=HTTPS://example.com/a.png",
        "/en/gradio_api/file=//example.com/a.png",
    ],
)
def test_no_file_route_fetches_a_url(served, path):
    """Answered by our guard, before Gradio would fetch the URL (offline, Gradio's fetch fails with 403 too,
    so the body tells them apart)."""
    client, _, _ = served
    r = client.get(path, follow_redirects=False)
    assert (r.status_code, r.content) == (403, b"File not allowed."), path


@pytest.mark.parametrize(
    "path",
    [
        "/en/gradio_api/file/etc/passwd",
        "/en/gradio_api/file/" + str(ROOT / "pyproject.toml"),
        "/file=/etc/passwd",  # the gradio 3 route does not exist
        "/en/file=/etc/passwd",
        "/en/static/../../../../etc/passwd",
        "/en/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/en/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/en/gradio_api/proxy=https://example.com/x",
    ],
)
def test_legacy_static_and_url_routes_serve_nothing_of_ours(served, path):
    client, _, _ = served
    r = client.get(path, follow_redirects=False)
    assert r.status_code in (400, 403, 404), (path, r.status_code)
    assert "root:" not in r.text and "[project]" not in r.text


def test_gradio_examples_cache_in_the_working_directory_is_not_served(served, tmp_path, monkeypatch):
    """Gradio serves its examples cache (default `.gradio/cached_examples`, relative to the working directory):
    a user who starts the GUI in a folder where another Gradio app (the Kohya GUI) cached files must not have
    them served. The cache is pointed into the app's private temp folder."""
    client, _, _ = served
    cached = tmp_path / ".gradio" / "cached_examples" / "note.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("private")
    monkeypatch.chdir(tmp_path)
    r = client.get(f"/en/gradio_api/file={cached}")
    assert r.status_code in (403, 404) and "private" not in r.text
