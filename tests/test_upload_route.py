"""Dataset > Prepare folders' own upload route (gui/upload_route.py, issue 24) against the real app (create_app,
its web guards and Gradio's login): only the page's login and origin get in, a dataset far over Gradio's 4 MB
upload limit arrives and is prepared, the route's own limits (size, a full disk made real with a small tmpfs,
uploads at once and per minute) are each one coded sentence, a hostile zip is refused with nothing kept, and the
body is streamed to disk, never held whole in memory."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
import tracemalloc
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loratrainer.config import TrainingConfig
from tests.datasets import make_caption, make_image

HOST = "http://127.0.0.1:7860"
PAGE = {"Origin": HOST}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app as `loratrainer gui --username me` serves it (loopback, English page), with its own state folder."""
    from loratrainer.gui.server import ServeOptions, neutralise_gradio_env

    temp = neutralise_gradio_env()
    from fastapi.testclient import TestClient

    from loratrainer.gui.app import create_app

    state = tmp_path_factory.mktemp("state")
    app = create_app(ServeOptions(username="me", password="right-pw", language="en", state_dir=state, max_upload_mb=100), temp_dir=temp)
    route = next(r.endpoint.__self__ for r in app.routes if getattr(r, "path", "") == "/lt-upload/dataset")
    with TestClient(app, base_url=HOST) as client:
        yield {"app": app, "client": client, "route": route, "state": state}
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def route(served):
    """The route's limits and counters as the server starts them, after each test too."""
    r = served["route"]
    saved = (r.root, r.limit, r.clock)
    r._started.clear()
    yield r
    r.root, r.limit, r.clock = saved
    r._started.clear()
    r._active = 0


def login(client) -> None:
    r = client.post("/login", data={"username": "me", "password": "right-pw"}, headers=PAGE)
    assert r.status_code == 200, r.text


def multipart(files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(client, files: dict[str, bytes], lang: str = "en", headers: dict | None = None):
    body, ctype = multipart(files)
    merged = {**PAGE, "Content-Type": ctype, **(headers or {})}
    return client.post(f"/lt-upload/dataset?lang={lang}", content=body, headers={k: v for k, v in merged.items() if v is not None})


def photos_zip(tmp: Path, count: int = 3) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(count):
            image = make_image(tmp / f"house {i}.png", color=(40 * i, 120, 200))
            make_caption(image, f"a small house, view {i}")
            zf.write(image, f"houses/{image.name}")
            zf.write(image.with_suffix(".txt"), f"houses/house {i}.txt")
    return buf.getvalue()


def uploads(state: Path) -> list[str]:
    root = state / "upload"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_without_the_page_login_or_from_another_site_nothing_is_received(served, route, tmp_path):
    client = served["client"]
    client.cookies.clear()
    r = post(client, {"houses.zip": photos_zip(tmp_path)})
    assert r.status_code == 403 and r.json()["code"] == "upload.route.login", r.text
    assert r.json()["detail"] == "Log in to the page first: an upload without the page's login is refused."
    r = post(client, {"houses.zip": photos_zip(tmp_path)}, lang="ko")
    assert r.status_code == 403 and "로그인" in r.json()["detail"]
    login(client)
    # another web site's script, logged in through the user's browser cookie: the Origin guard refuses it first
    r = post(client, {"houses.zip": photos_zip(tmp_path)}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["code"] == "web.cross_origin", r.text
    r = post(client, {"houses.zip": photos_zip(tmp_path)}, headers={"Origin": None, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and r.json()["code"] == "web.cross_origin", r.text
    assert uploads(served["state"]) == []


def test_a_zip_of_images_arrives_unpacked_and_becomes_a_project(served, route, tmp_path):
    from loratrainer.gui.app import build_page
    from loratrainer.gui.display import Display
    from loratrainer.gui.jobs import Jobs

    client = served["client"]
    login(client)
    r = post(client, {"houses.zip": photos_zip(tmp_path / "photos")})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["images"] == 3 and answer["captions"] == 3 and "3 image(s)" in answer["message"]
    assert uploads(served["state"]) == [answer["id"]]
    # Prepare folders with that upload, in a page sharing the server's state folder
    _, ui = build_page("en", Jobs(served["state"]), Display(tmp_path / "display"))
    data = ui.show_config(TrainingConfig())
    for name, value in {"prep_src": "", "prep_dest": str(tmp_path / "project"), "prep_name": "house", "prep_repeats": "",
                        "prep_reg": "", "prep_upload": answer["id"]}.items():
        data[ui.named[name]] = value
    out = ui.handlers["dataset"].prepare(data)
    assert "Created" in out[ui.named["prep_message"]], out
    concept = tmp_path / "project" / "image" / "150_house"
    assert sorted(p.name for p in concept.iterdir()) == sorted([f"house {i}.png" for i in range(3)] + [f"house {i}.txt" for i in range(3)])
    assert uploads(served["state"]) == []  # prepared: the upload is removed
    out = ui.handlers["dataset"].prepare(data)  # the same id again: said, nothing made
    assert out == {ui.named["prep_message"]: "**Error:** The uploaded pictures are no longer on the server (prepared already, or removed after a day): upload them again"}


def noise_png(path: Path, seed: int) -> Path:
    """A 1024 x 1024 photo-sized image that does not compress (PNG level 0: quick to write)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)
    return path


def test_a_55_mb_zip_of_images_arrives_streamed_to_disk(served, route, tmp_path):
    """Far over Gradio's 4 MB upload limit; the body goes to disk in the chunks it arrives in (the server holds
    at most a few MB of it at any time, measured with tracemalloc)."""
    client = served["client"]
    login(client)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        for i in range(18):
            zf.write(noise_png(tmp_path / f"photo {i}.png", i), f"photo {i}.png")
            zf.writestr(f"photo {i}.txt", f"a photo, number {i}")
    body_head, ctype = multipart({"big.zip": b""})
    boundary = ctype.split("=", 1)[1]
    head = body_head[: body_head.index(b"\r\n--" + boundary.encode() + b"--")]
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = len(head) + big.stat().st_size + len(tail)
    assert size > 50 * 1024 * 1024

    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    headers = [(b"host", b"127.0.0.1:7860"), (b"origin", HOST.encode()), (b"cookie", cookie.encode()),
               (b"content-type", ctype.encode()), (b"content-length", str(size).encode())]
    answer = {"status": 0, "body": b""}

    async def drive():
        """The request as uvicorn hands it to the app: the body in the chunks it arrives in (TestClient would read
        the whole body first)."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/lt-upload/dataset", "raw_path": b"/lt-upload/dataset", "root_path": "", "query_string": b"",
                 "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 7860)}
        def pieces():
            yield head
            with open(big, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    yield chunk
            yield tail

        body = pieces()

        async def receive():
            chunk = next(body, None)
            if chunk is None:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk, "more_body": chunk is not tail}

        async def send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        await served["app"](scope, receive, send)

    tracemalloc.start()
    try:
        client.portal.call(drive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    import json

    r = type("Answer", (), {"status_code": answer["status"], "text": answer["body"].decode(), "json": lambda self: json.loads(answer["body"])})()
    assert r.status_code == 200, r.text
    assert r.json()["images"] == 18 and r.json()["captions"] == 18
    assert peak < 16 * 1024 * 1024, f"{peak / 2**20:.0f} MB held at once"
    dataset = served["state"] / "upload" / r.json()["id"] / "dataset"
    assert (dataset / "photo 7.png").read_bytes() == (tmp_path / "photo 7.png").read_bytes()
    assert not (served["state"] / "upload" / r.json()["id"] / "received").exists()  # the zip itself is gone once unpacked
    shutil.rmtree(served["state"] / "upload" / r.json()["id"])


def test_loose_images_and_captions_arrive_as_they_are(served, route, tmp_path):
    client = served["client"]
    login(client)
    img = make_image(tmp_path / "dog.png").read_bytes()
    r = post(client, {"dog.png": img, "dog.txt": b"a dog", "C:\\Users\\me\\cat.png": img})
    assert r.status_code == 200, r.text
    dataset = served["state"] / "upload" / r.json()["id"] / "dataset"
    assert sorted(p.name for p in dataset.iterdir()) == ["cat.png", "dog.png", "dog.txt"]
    # chosen again on the page before Prepare folders: the first upload is removed, the second kept
    body, ctype = multipart({"dog.png": img})
    again = client.post(f"/lt-upload/dataset?lang=en&replaces={r.json()['id']}", content=body, headers={**PAGE, "Content-Type": ctype})
    assert again.status_code == 200 and uploads(served["state"]) == [again.json()["id"]]
    shutil.rmtree(served["state"] / "upload" / again.json()["id"])


def test_over_the_limit_is_one_sentence_before_anything_is_read(served, route, tmp_path):
    client = served["client"]
    login(client)
    route.limit = 1024 * 1024
    r = post(client, {"big.png": bytes(2 * 1024 * 1024)})
    assert r.status_code == 413 and r.json()["code"] == "upload.route.too_large"
    assert r.json()["detail"] == "The upload is 2 MB, more than the 1 MB this server accepts (start the GUI with --max-upload-mb to raise it); nothing was kept."
    assert uploads(served["state"]) == []
    # a body longer than it announced is cut off at the announced size
    body, ctype = multipart({"a.png": bytes(1000)})
    r = client.post("/lt-upload/dataset", content=iter([body[:500], body[500:]]), headers={**PAGE, "Content-Type": ctype, "Content-Length": "400"})
    assert r.status_code == 413 and r.json()["code"] == "upload.route.longer", r.text
    assert uploads(served["state"]) == []


def evil(kind: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.png", b"x")
        if kind == "dotdot":
            zf.writestr("../../escaped.png", b"evil")
        elif kind == "absolute":
            zf.writestr(zipfile.ZipInfo("/tmp/loratrainer-escaped.png"), b"evil")
        elif kind == "symlink":
            info = zipfile.ZipInfo("passwd.png")
            info.create_system = 3
            info.external_attr = (0o120777) << 16
            zf.writestr(info, "/etc/passwd")
        elif kind == "bomb":
            zf.writestr("zeros.png", bytes(32 * 1024 * 1024))
    return buf.getvalue()


@pytest.mark.parametrize("kind, words", [("dotdot", "would unpack outside its folder"), ("absolute", "would unpack outside its folder"),
                                         ("symlink", "is a link"), ("bomb", "(a zip bomb)")])
def test_a_hostile_zip_is_refused_in_one_sentence_with_nothing_kept(served, route, kind, words):
    client = served["client"]
    login(client)
    r = post(client, {"evil.zip": evil(kind)})
    assert r.status_code == 400 and r.json()["code"].startswith("upload.zip."), r.text
    detail = r.json()["detail"]
    assert words in detail and "evil.zip" in detail and "nothing was unpacked" in detail and "\n" not in detail
    assert uploads(served["state"]) == [] and not Path("/tmp/loratrainer-escaped.png").exists()


def test_uploads_at_once_and_per_minute_are_limited(served, route, tmp_path):
    from loratrainer.gui import upload_route

    client = served["client"]
    login(client)
    route._active = upload_route.MAX_ACTIVE  # two uploads still arriving
    r = post(client, {"a.png": b"x"})
    assert r.status_code == 429 and r.json()["code"] == "upload.route.busy"
    route._active = 0
    now = [1000.0]
    route.clock = lambda: now[0]
    answers = [post(client, {"a.txt": b"x"}) for _ in range(upload_route.PER_MINUTE + 1)]
    assert [a.status_code for a in answers] == [200] * upload_route.PER_MINUTE + [429]
    assert answers[-1].json()["code"] == "upload.route.too_often"
    now[0] += 61  # a minute later it is accepted again
    assert post(client, {"a.txt": b"x"}).status_code == 200
    shutil.rmtree(served["state"] / "upload")


@pytest.fixture
def small_disk(tmp_path):
    """A real 20 MB file system (tmpfs): writing past it fails with ENOSPC as a full disk does."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_one_sentence_and_nothing_is_kept(served, route, small_disk, tmp_path):
    client = served["client"]
    login(client)
    route.root = small_disk / "upload"
    # more than the disk holds: refused before a byte is written
    r = post(client, {"big.png": os.urandom(30 * 1024 * 1024)})
    assert r.status_code == 507 and r.json()["code"] == "upload.route.disk_full", r.text
    assert "MB free in" in r.json()["detail"] and str(small_disk / "upload") in r.json()["detail"]
    assert list((small_disk / "upload").iterdir()) == []
    # the disk fills while the body arrives (another program writes to it): ENOSPC is said, the part removed
    from loratrainer.gui import upload_route

    margin = upload_route.MARGIN_BYTES
    upload_route.MARGIN_BYTES = 0
    try:
        body, ctype = multipart({"photo.png": os.urandom(8 * 1024 * 1024)})

        def chunks():
            yield body[: 1024 * 1024]
            with open(small_disk / "filler", "wb") as f:  # the rest of the disk, taken meanwhile
                try:
                    while True:
                        f.write(bytes(1024 * 1024))
                        f.flush()
                except OSError:
                    pass
            yield body[1024 * 1024:]

        r = client.post("/lt-upload/dataset", content=chunks(), headers={**PAGE, "Content-Type": ctype, "Content-Length": str(len(body))})
    finally:
        upload_route.MARGIN_BYTES = margin
    assert r.status_code == 507 and r.json()["code"] == "upload.route.disk_filled", r.text
    assert list((small_disk / "upload").iterdir()) == []
    (small_disk / "filler").unlink()
    # a zip whose entries would unpack to more than the disk holds: refused before unpacking, the zip removed
    captions = io.BytesIO()
    words = [f"word{i}" for i in range(400)]
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(captions, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):  # text compresses ~10x (under the bomb ratio); 6 x 5 MB unpacks to 30 MB
            zf.writestr(f"caption {i}.txt", " ".join(rng.choice(words, 700_000)).encode()[: 5 * 1024 * 1024])
    assert len(captions.getvalue()) < 10 * 1024 * 1024
    upload_route.MARGIN_BYTES = 0
    try:
        r = post(client, {"captions.zip": captions.getvalue()})
    finally:
        upload_route.MARGIN_BYTES = margin
    assert r.status_code == 507 and r.json()["code"] == "upload.route.disk_full", r.text
    assert list((small_disk / "upload").iterdir()) == []


def test_a_state_folder_that_cannot_be_written_is_one_sentence(served, route, tmp_path):
    client = served["client"]
    login(client)
    (tmp_path / "a-file").write_text("not a folder")
    route.root = tmp_path / "a-file" / "upload"
    r = post(client, {"a.txt": b"x"})
    assert r.status_code == 500 and r.json()["code"] == "upload.route.failed", r.text
    assert r.json()["detail"].startswith(f"The upload could not be written to {route.root} (") and "Traceback" not in r.text


def test_an_upload_never_prepared_is_removed_after_a_day(served, route, tmp_path):
    from loratrainer.gui import upload_route

    client = served["client"]
    login(client)
    old = served["state"] / "upload" / ("a" * 32)
    (old / "dataset").mkdir(parents=True)
    day_ago = time.time() - upload_route.KEEP_S - 60
    os.utime(old, (day_ago, day_ago))
    r = post(client, {"a.txt": b"x"})
    assert r.status_code == 200 and uploads(served["state"]) == [r.json()["id"]]
    assert upload_route.uploaded_dataset(served["state"], "../" + r.json()["id"]) is None  # an id, never a path
    upload_route.discard(served["state"], r.json()["id"])
    assert uploads(served["state"]) == []


def test_with_both_page_languages_either_page_s_login_lets_an_upload_in(tmp_path):
    """As `loratrainer gui --username me` serves it by default: /en/ and /ko/, each its own login."""
    from fastapi.testclient import TestClient

    from loratrainer.gui.app import create_app
    from loratrainer.gui.server import ServeOptions, neutralise_gradio_env

    temp = neutralise_gradio_env()
    try:
        app = create_app(ServeOptions(username="me", password="right-pw", state_dir=tmp_path / "state"), temp_dir=temp)
        with TestClient(app, base_url=HOST) as client:
            assert post(client, {"a.txt": b"x"}, lang="ko").json()["code"] == "upload.route.login"
            assert client.get("/lt-upload/dataset", headers=PAGE).status_code == 403  # the limits too
            r = client.post("/ko/login", data={"username": "me", "password": "right-pw"}, headers=PAGE)
            assert r.status_code == 200, r.text
            r = post(client, {"a.txt": b"x"}, lang="ko")
            assert r.status_code == 200 and "받음" in r.json()["message"], r.text
            limits = client.get("/lt-upload/dataset", headers=PAGE).json()
            assert limits["limit_mb"] == 2048 and limits["free_mb"] > 0
    finally:
        shutil.rmtree(temp, ignore_errors=True)
