"""Dataset > Prepare folders' own upload route: a dataset (images with their captions, or one zip of them) sent
from the page to a GUI on another machine (docs/remote.md), larger than Gradio's upload limits allow.

Gradio's own upload route stays limited to config files (app.py's max_file_size, web_guards.UploadLimit); this one
takes `POST /lt-upload/dataset` (multipart/form-data, one field per file) and

- refuses, in one coded sentence, what the page itself would refuse: a request from another origin (403; the
  OriginGuard in front says so first), a request without the page's login (403: Gradio's own `login_check` of a
  mounted page is asked with the request's cookies, so the rule is the page's), more than MAX_ACTIVE uploads at
  once or more than PER_MINUTE from one address in a minute (429), a body without a length (411) or larger than
  `--max-upload-mb` (413), and a body the server has no room for (507: checked before anything is written, again
  before a zip is unpacked, and a disk that fills meanwhile is said as well);
- streams the body to files under `<state>/upload/<id>/received/` as it arrives (never whole in memory), then
  hands them to data/upload.py (zips unpacked safely, hostile ones refused with nothing unpacked) into
  `<id>/dataset/`; the page's Prepare folders copies from there (tab_dataset.py) and removes the upload.

What is refused or fails is removed at once; an upload never prepared is removed after KEEP_S.
"""

from __future__ import annotations

import errno
import re
import secrets
import shutil
import threading
import time
from collections import defaultdict, deque
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from loratrainer.data.upload import dataset_root, free_name, gather_upload, plain_name, unpacked_size
from loratrainer.errors import UserError
from loratrainer.gui import gradio_adapter
from loratrainer.gui.i18n import LANGUAGES, Translator, sentence
from loratrainer.gui.web_guards import foreign_origin
from loratrainer.messages import Msg, define

define({
    "upload.route.limit_too_small": "--max-upload-mb {value}: give at least 1 (MB)",
    "upload.route.origin": "this upload came from another web site and was refused",
    "upload.route.login": "log in to the page first: an upload without the page's login is refused",
    "upload.route.busy": "{active} uploads are already arriving: try again when one of them is done",
    "upload.route.too_often": "more than {limit} uploads from this address in a minute: wait a minute and try again",
    "upload.route.no_length": "the upload did not say its size (Content-Length) and was refused",
    "upload.route.not_multipart": "the upload is not a form upload (multipart/form-data) and was refused",
    "upload.route.too_large": "the upload is {size} MB, more than the {limit} MB this server accepts (start the GUI with --max-upload-mb to raise it); nothing was kept",
    "upload.route.disk_full": "the server has {free} MB free in {folder}, not enough for the {need} MB this upload needs; free some space there and try again, nothing was kept",
    "upload.route.disk_filled": "the server's disk filled up while the upload arrived ({folder}); free some space there and try again, nothing was kept",
    "upload.route.failed": "the upload could not be written to {folder} ({reason}); nothing was kept",
    "upload.route.longer": "the upload sent more than the {size} MB it announced and was refused; nothing was kept",
    "upload.route.cut_off": "the upload was cut off before it was complete; nothing was kept",
    "upload.route.empty": "the upload holds no files",
    "upload.route.gone": "the uploaded pictures are no longer on the server (prepared already, or removed after a day): upload them again",
})

ROUTE = "/lt-upload/dataset"
DEFAULT_MAX_UPLOAD_MB = 2048  # 2 GB: a LoRA dataset of a few hundred full-size photos, zipped or not
MAX_ACTIVE = 2  # uploads arriving at once (the whole server): each writes to disk as fast as the network allows
PER_MINUTE = 10  # uploads started per address in a minute
MARGIN_BYTES = 64 * 1024 * 1024  # left free on the disk after an upload: the state folder also holds the run list
KEEP_S = 24 * 3600  # an upload that was never prepared is removed after a day
_ID = re.compile(r"[0-9a-f]{32}")
_CHUNK = 1024 * 1024


def upload_root(state_dir: str | Path) -> Path:
    return Path(state_dir) / "upload"


def uploaded_dataset(state_dir: str | Path, upload_id: object) -> Path | None:
    """The folder prepare should read for upload `upload_id` (the page's value, which names no path: only an id
    this route made), or None when there is no such upload (any more)."""
    if not isinstance(upload_id, str) or not _ID.fullmatch(upload_id.strip()):
        return None
    folder = upload_root(state_dir) / upload_id.strip() / "dataset"
    return dataset_root(folder) if folder.is_dir() else None


def discard(state_dir: str | Path, upload_id: object) -> None:
    if isinstance(upload_id, str) and _ID.fullmatch(upload_id.strip()):
        shutil.rmtree(upload_root(state_dir) / upload_id.strip(), ignore_errors=True)


def add_upload_route(app, state_dir: str | Path, max_upload_mb: int | None = None,
                     pages: Callable[[], list[tuple[str, Any]]] | None = None) -> None:
    """Register the route on the FastAPI app that mounts the pages (before the pages: a page mounted at `/` would
    take every path). `pages()`: the pages built so far, (path prefix, the ASGI app serving it), whose login an
    upload must have passed; by default the pages mounted on `app` itself."""
    if max_upload_mb is not None and max_upload_mb < 1:
        raise UserError(Msg.of("upload.route.limit_too_small", value=max_upload_mb))
    route = UploadRoute(upload_root(state_dir), (max_upload_mb or DEFAULT_MAX_UPLOAD_MB) * 1024 * 1024,
                        pages=pages or (lambda: gradio_adapter.mounted_pages(app)))
    app.add_route(ROUTE, route.handle, methods=["GET", "POST"], include_in_schema=False)


class Refused(Exception):
    def __init__(self, status: int, msg: Msg):
        super().__init__(msg.code)
        self.status, self.msg = status, msg


class UploadRoute:
    def __init__(self, root: Path, limit: int, clock: Callable[[], float] = time.monotonic,
                 pages: Callable[[], list[tuple[str, Any]]] = lambda: []):
        self.root, self.limit, self.clock, self.pages = root, limit, clock, pages
        self._active = 0
        self._started: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    async def handle(self, request):
        from starlette.responses import JSONResponse

        lang = request.query_params.get("lang")
        t = Translator(lang if lang in LANGUAGES else "en")
        try:
            if request.method == "GET":  # the limits the page says under the upload box
                await self._check_who(request)
                self.root.mkdir(parents=True, exist_ok=True)
                return JSONResponse({"limit_mb": _mb(self.limit), "free_mb": _mb(shutil.disk_usage(self.root).free)})
            await self._check(request)
            client = (request.client.host if request.client else "?")
            self._enter(client)
            replaced = request.query_params.get("replaces", "")
            if _ID.fullmatch(replaced):  # the page's earlier upload, never prepared: chosen again, it goes now
                shutil.rmtree(self.root / replaced, ignore_errors=True)
            try:
                return JSONResponse(await self._receive(request, t))
            finally:
                with self._lock:
                    self._active -= 1
        except Refused as exc:
            return JSONResponse({"detail": _said(t, t.message(exc.msg)), "code": exc.msg.code}, status_code=exc.status)
        except UserError as exc:  # data/upload.py's refusal of a zip or a file name
            return JSONResponse({"detail": _said(t, t.error_text(exc)), "code": exc.code}, status_code=400)
        except OSError as exc:  # a state folder that cannot be written, a disk error: said, not a traceback
            msg = Msg.of("upload.route.failed", folder=str(self.root), reason=exc.strerror or str(exc))
            return JSONResponse({"detail": _said(t, t.message(msg)), "code": msg.code}, status_code=500)

    async def _check_who(self, request) -> None:
        if foreign_origin(request.scope):
            raise Refused(403, Msg.of("upload.route.origin"))
        if not await _logged_in(request, self.pages):
            raise Refused(403, Msg.of("upload.route.login"))

    async def _check(self, request) -> None:
        """Who may upload, and whether this one could fit, before a byte of the body is read."""
        await self._check_who(request)
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise Refused(411, Msg.of("upload.route.no_length"))
        if int(length) > self.limit:
            raise Refused(413, Msg.of("upload.route.too_large", size=_mb(int(length)), limit=_mb(self.limit)))
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise Refused(415, Msg.of("upload.route.not_multipart"))

    def _enter(self, client: str) -> None:
        with self._lock:
            started = self._started[client]
            while started and self.clock() - started[0] > 60:
                started.popleft()
            if len(started) >= PER_MINUTE:
                raise Refused(429, Msg.of("upload.route.too_often", limit=PER_MINUTE))
            if self._active >= MAX_ACTIVE:
                raise Refused(429, Msg.of("upload.route.busy", active=self._active))
            started.append(self.clock())
            self._active += 1

    async def _receive(self, request, t: Translator) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        length = int(request.headers["content-length"])
        self.root.mkdir(parents=True, exist_ok=True)
        await run_in_threadpool(_sweep, self.root)
        self._room_for(length)
        upload_id = secrets.token_hex(16)
        folder = self.root / upload_id
        received, dataset = folder / "received", folder / "dataset"
        received.mkdir(parents=True)
        try:
            files = await _stream_parts(request, received, length)
            if not files:
                raise Refused(400, Msg.of("upload.route.empty"))
            self._room_for(await run_in_threadpool(unpacked_size, files))
            dataset.mkdir()
            # a zip may unpack to twice the upload limit (data/upload.py checks every entry before it writes one)
            await run_in_threadpool(gather_upload, files, dataset, move=True, max_bytes=max(2 * self.limit, 1))
            shutil.rmtree(received, ignore_errors=True)
        except BaseException as exc:  # refused, cut off or failed: nothing of it stays
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise Refused(507, Msg.of("upload.route.disk_filled", folder=str(self.root))) from None
            raise
        images, captions = _count(dataset_root(dataset))
        return {"id": upload_id, "files": len(files), "images": images, "captions": captions,
                "message": t("prepare.upload_received", files=len(files), images=images, captions=captions)}

    def _room_for(self, size: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free < size + MARGIN_BYTES:
            raise Refused(507, Msg.of("upload.route.disk_full", free=_mb(free), folder=str(self.root), need=_mb(size + MARGIN_BYTES)))


async def _logged_in(request, pages: Callable[[], list[tuple[str, Any]]]) -> bool:
    """Whether one of the pages built so far lets this request in (their own login; a page without one does)."""
    for prefix, page_app in pages():
        if await gradio_adapter.page_lets_in(page_app, prefix, request):
            return True
    return False


async def _stream_parts(request, into: Path, length: int) -> list[Path]:
    """Write each file part of the multipart body to its own file in `into` as the body arrives; form fields
    without a file name are dropped. At most `length` bytes (the announced size, already within the limit)."""
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise Refused(415, Msg.of("upload.route.not_multipart"))
    files: list[Path] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "out": None}

    def on_part_begin():
        state["headers"] = {}

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished():
        _, options = parse_options_header(state["headers"].get(b"content-disposition", b""))
        raw = options.get(b"filename")
        if raw is None:
            state["out"] = None
            return
        # a browser sends the bare name; older ones sent C:\...\name: only the last part is ever used
        name = plain_name(PurePosixPath(raw.decode("utf-8", "replace").replace("\\", "/")).name)
        target = free_name(into / name)  # two files of one name (from two folders) both arrive: "a (2).png"
        state["out"] = open(target, "xb")
        files.append(target)

    def on_part_data(data, start, end):
        if state["out"] is not None:
            state["out"].write(data[start:end])

    def on_part_end():
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
                                        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
                                        "on_part_end": on_part_end})
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > length:
                raise Refused(413, Msg.of("upload.route.longer", size=_mb(length)))
            # in a worker thread: a slow disk must not hold up the page's other requests (a run's live view)
            await run_in_threadpool(parser.write, chunk)
        parser.finalize()
    except ClientDisconnect:
        raise Refused(400, Msg.of("upload.route.cut_off")) from None
    finally:
        if state["out"] is not None:
            state["out"].close()
    if seen < length:
        raise Refused(400, Msg.of("upload.route.cut_off"))
    return files


def _sweep(root: Path) -> None:
    """Remove uploads older than KEEP_S (never prepared: the page was closed)."""
    now = time.time()
    for folder in root.iterdir():
        try:
            if folder.is_dir() and _ID.fullmatch(folder.name) and now - folder.stat().st_mtime > KEEP_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def _count(folder: Path) -> tuple[int, int]:
    from loratrainer.data.images import is_image_name

    images = captions = 0
    for p in folder.rglob("*"):
        if p.is_file():
            images += is_image_name(p.name)
            captions += p.suffix.lower() in (".txt", ".caption")
    return images, captions


def _said(t: Translator, text: str) -> str:
    """A message shown on its own, as a sentence (gui/i18n.sentence: a file name first keeps its case)."""
    return sentence(text, t.lang) + "."


def _mb(n: int) -> int:
    return max(1, round(n / (1024 * 1024)))
