"""``python -m cifar_lightning serve``: a checkpoint behind HTTP with LitServe.

- ``POST /predict``, a multipart form with the field ``image`` (any format and size ``predict``
  reads), answers ``{"predictions": [{"class": NAME, "probability": P}, ...]}``, the top 3, most
  likely first. Images are decoded and resized by ``decode.py``, as ``predict`` reads a file, and
  classified by the model's ``predict_proba`` (temperature included), so the server, the CLI, Python
  and the ONNX export give the same probabilities for the same file.
- Bad uploads get a 4xx with ``{"error": "<what was wrong>"}``, never a 500: no ``image`` field or
  more than one, a file that is not an image, a body that is not a multipart form (400); a declared
  or actual body over 10 MiB, an image over 40 megapixels (413, the first before the body is read,
  the second before the image is decoded); a body that stops arriving for ``body_timeout`` seconds
  (408); headers that take longer than ``header_timeout`` seconds (408, closed). A bad upload fails
  alone: the other requests of its batch are answered as usual. Uploaded file names appear in errors
  only sanitised and shortened.
- Uploads are decoded by ``UploadLimit`` in the HTTP process's threads (``DecodeGate``), not in the
  worker that batches and predicts: small images at once, large ones (over 4 megapixels as decoded)
  one at a time with two waiting and any more answered 503, so a burst of costly images neither
  stalls other clients nor grows memory without bound.
- Closed by default: no API docs (``/docs``, ``/redoc``, ``/openapi.json``) or ``/info`` unless
  ``api_docs``; no cross-origin requests unless ``cors_origins`` names the origins allowed; idle
  keep-alive connections closed after ``keep_alive_timeout`` seconds.
- Requests are batched (``max_batch_size``, ``batch_timeout``): one forward pass for all images that
  arrive within ``batch_timeout`` seconds of each other, up to ``max_batch_size``.
- ``GET /`` is a small web page to pick or drop an image and see the top 3 as bars
  (``web/index.html``); ``GET /health`` is LitServe's health route ("ok" once the model is loaded).

docs/deploy.md has the commands, a ``curl`` example and measured throughput.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import secrets
import signal
import socket
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import torch

from cifar_lightning.errors import UserInputError
from cifar_lightning.serve.header_timeout import protocol_with_header_timeout

try:
    import litserve as ls
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
except ImportError as missing:  # a training-only install
    raise UserInputError(f"serve needs LitServe ({missing.name} is not installed): "
                         "pip install -e '.[serve]' (or '.[dev]').") from None

from cifar_lightning.decode import (
    DECODE_ERRORS,
    IMAGE_SIZE,
    ImageTooLarge,
    decode_image_bytes,
    load_tensor,
    open_header,
)
from cifar_lightning.model.checkpoints import check_checkpoint
from cifar_lightning.model.loading import classifier_from_checkpoint

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # the largest image file accepted
BODY_TIMEOUT = 15.0  # seconds a request body may stall before the request is answered 408
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection is kept (uvicorn's timeout_keep_alive)
HEADER_TIMEOUT = 10.0  # seconds a request's headers may take (header_timeout.py; uvicorn has no such limit)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/info")
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and headers around it
FIELD = "image"
INLINE_DECODE_PIXELS = 512 * 512  # decodes up to this size run on the event loop itself (about a millisecond)
SMALL_DECODE_PIXELS = 4_000_000  # decodes up to this size run at once, in threads (tens of milliseconds each)
RETRY_AFTER_SECONDS = 5  # the Retry-After of a 503
PIXELS_TYPE = "application/x-cifar-lightning-pixels"  # UploadLimit's hand-off: uint8 (3, 32, 32), raw
PIXELS_BYTES = 3 * 32 * 32
TOP_K = 3
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServer.run accepts


def page() -> str:
    """The web page served at ``GET /``."""
    return resources.files("cifar_lightning.serve").joinpath("web/index.html").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Rejected:
    """An upload that cannot be classified: answered alone with ``status`` and ``{"error": message}``."""

    status: int
    message: str


def error_response(status: int, message: str, close: bool = False) -> JSONResponse:
    """``{"error": message}``; ``close``: tell the client the connection ends here (a body left unread);
    a 503 says when to retry."""
    headers = {"Connection": "close"} if close else {}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def safe_name(name: str, limit: int = 40) -> str:
    """An uploaded file name as it may appear in a message: its last path part, characters other than
    letters, digits, '.', '-' and '_' replaced by '_', at most ``limit`` characters."""
    base = re.split(r"[\\/]", str(name))[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base) or "upload"
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def pick_upload(parts: list) -> Any:
    """The form's one ``image`` file part, or a ``Rejected`` saying what is wrong with the form."""
    if len(parts) > 1:
        return Rejected(400, f"The form has {len(parts)} '{FIELD}' fields: send exactly one image per request.")
    upload = parts[0] if parts else None
    if upload is None:
        return Rejected(400, f"No '{FIELD}' field in the form. Send the image as a file field named "
                             f"'{FIELD}', e.g. curl -F {FIELD}=@photo.jpg URL/predict.")
    if not hasattr(upload, "read"):  # a text field (curl -F image=cat.jpg without the @)
        return Rejected(400, f"The '{FIELD}' field holds text, not a file. Send a file, e.g. "
                             f"curl -F {FIELD}=@photo.jpg URL/predict (note the @).")
    return upload


def read_upload(upload: Any) -> tuple[str, bytes] | Rejected:
    """A file part -> (its sanitised name, its bytes), or why not (empty, over the size limit)."""
    name = safe_name(getattr(upload, "filename", None) or FIELD)
    upload.file.seek(0)
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        return Rejected(413, f"{name} is larger than the {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB limit.")
    if not data:
        return Rejected(400, f"{name} is empty.")
    return name, data


def decoding_error(name: str, error: Exception) -> Rejected:
    if isinstance(error, ImageTooLarge):
        return Rejected(413, f"{name}: {error}.")
    return Rejected(400, f"{name} is not an image Pillow can read ({type(error).__name__}).")


def upload_bytes(parts: list) -> tuple[str, bytes] | Rejected:
    """The form's ``image`` parts -> (the file's sanitised name, its bytes), or why not."""
    upload = pick_upload(parts)
    return upload if isinstance(upload, Rejected) else read_upload(upload)


def decode_upload(parts: list) -> torch.Tensor | Rejected:
    """The form's ``image`` parts -> uint8 (3, 32, 32) as ``predict`` makes it from a file, or why not."""
    read = upload_bytes(parts)
    if isinstance(read, Rejected):
        return read
    name, data = read
    try:
        return decode_image_bytes(data)
    except DECODE_ERRORS as error:
        return decoding_error(name, error)


def pixels_from_upload(upload: Any) -> torch.Tensor | Rejected:
    """``UploadLimit``'s hand-off (``PIXELS_TYPE``) -> uint8 (3, 32, 32)."""
    upload.file.seek(0)
    data = upload.file.read(PIXELS_BYTES + 1)
    if len(data) != PIXELS_BYTES:
        return Rejected(400, f"The decoded image has {len(data)} bytes, not {PIXELS_BYTES}.")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(3, IMAGE_SIZE, IMAGE_SIZE)


class DecodeGate:
    """Uploads decoded in threads of the HTTP process, off its event loop and off the worker that
    batches and predicts, each priced from its header first (``open_header``: the pixels it will
    decode, after JPEG's reduced decode):

    - up to ``INLINE_DECODE_PIXELS`` (thumbnails, CIFAR-sized images): decoded at once on the event
      loop, since handing a millisecond's work to a thread costs more than it saves;
    - up to ``SMALL_DECODE_PIXELS`` (any photo, since a large JPEG decodes at a reduced scale):
      decoded at once, in parallel threads;
    - larger ones (a big PNG, GIF or TIFF, up to the ``MAX_PIXELS`` budget): ``large_at_once`` at a
      time, ``large_waiting`` more queued, any beyond answered 503 with Retry-After, so a burst of
      them bounds memory and never delays the small ones.
    """

    def __init__(self, large_at_once: int = 1, large_waiting: int = 2):
        self.large = asyncio.Semaphore(large_at_once)
        self.capacity = large_at_once + large_waiting
        self.large_in_flight = 0

    async def decode(self, name: str, data: bytes) -> torch.Tensor | Rejected:
        try:
            image = open_header(io.BytesIO(data))
        except DECODE_ERRORS as error:
            return decoding_error(name, error)
        cost = image.size[0] * image.size[1]
        if cost <= INLINE_DECODE_PIXELS:  # a millisecond or two: a thread would cost more (the GIL hand-over)
            return self.finish(name, image)
        if cost <= SMALL_DECODE_PIXELS:
            return await asyncio.to_thread(self.finish, name, image)
        if self.large_in_flight >= self.capacity:
            image.close()
            return Rejected(503, f"{name} is a large image ({cost / 1e6:.0f} megapixels) and the server is "
                                 "decoding others: retry in a few seconds, or send it smaller.")
        self.large_in_flight += 1
        try:
            async with self.large:
                return await asyncio.to_thread(self.finish, name, image)
        finally:
            self.large_in_flight -= 1

    @staticmethod
    def finish(name: str, image: Any) -> torch.Tensor | Rejected:
        try:
            return load_tensor(image)
        except DECODE_ERRORS as error:
            return decoding_error(name, error)


class ClassifierAPI(ls.LitAPI):
    """LitServe API of a checkpoint: a form with an image in, the top 3 classes out, requests batched.

    Args:
        checkpoint: The checkpoint to serve: its contents as ``check_checkpoint`` read them (the file
            is read once, by ``serve``), or a path to read.
        tta_flip: Override the checkpoint's ``tta_flip`` (None keeps it), as ``predict --model.tta_flip`` does.
        max_batch_size: Most requests in one forward pass.
        batch_timeout: Seconds to wait for a batch to fill once its first request has come.
        top_k: Classes in each answer.
    """

    def __init__(self, checkpoint: dict | str, tta_flip: bool | None = None, max_batch_size: int = 32,
                 batch_timeout: float = 0.01, top_k: int = TOP_K) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.checkpoint = checkpoint if isinstance(checkpoint, dict) else check_checkpoint(checkpoint)
        self.tta_flip = tta_flip
        self.top_k = top_k

    def setup(self, device: str) -> None:
        self.model = classifier_from_checkpoint(self.checkpoint, map_location=device)
        if self.tta_flip is not None:
            self.model.hparams.tta_flip = self.tta_flip
        self.device_ = torch.device(device)
        self.class_names = list(self.model.class_names)
        self.top_k = min(self.top_k, len(self.class_names))

    def decode_request(self, request):  # unannotated: LitServe then passes the parsed form (a Request's)
        # Never raise here: with batching, LitServe fails every request of the batch on one exception.
        # UploadLimit has decoded the upload already and handed on its 32x32 pixels, so no upload's
        # decoding delays a batch; a form that did not pass through it is decoded here.
        parts = request.getlist(FIELD) if hasattr(request, "getlist") else [request.get(FIELD)]
        parts = [part for part in parts if part is not None]
        if len(parts) == 1 and getattr(parts[0], "content_type", None) == PIXELS_TYPE:
            return pixels_from_upload(parts[0])
        return decode_upload(parts)

    def batch(self, inputs: list) -> list:
        return inputs  # predict stacks the images and leaves the rejected ones out

    @torch.inference_mode()
    def predict(self, inputs: list) -> list:
        """The model's ``predict_proba``, as ``predict_images`` calls it, on the images of the batch."""
        images = [x for x in inputs if isinstance(x, torch.Tensor)]
        rows = iter(())
        if images:
            batch = torch.stack(images).to(self.device_)
            probabilities = self.model.predict_proba(batch).cpu()
            top = probabilities.topk(self.top_k, dim=-1)
            rows = iter(zip(top.indices.tolist(), top.values.tolist()))
        return [next(rows) if isinstance(x, torch.Tensor) else x for x in inputs]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output):  # unannotated: LitServe sends whatever it returns
        if isinstance(output, Rejected):
            return error_response(output.status, output.message)
        indices, values = output
        return {"predictions": [{"class": self.class_names[i], "probability": p} for i, p in zip(indices, values)]}


class UploadLimit:
    """ASGI middleware for ``POST /predict``: 413 for a body over the limit (at once, unread, when its
    declared length says so), 408 for a body that stalls for ``body_timeout`` seconds, 400 for a body
    that is not a multipart form, all as ``{"error": ...}`` and before anything is parsed (LitServe
    would answer a non-form body with a 500). The body is read here, at most ``max_bytes`` of it; the
    image in it is decoded here (``DecodeGate``), a bad one answered at once, a good one handed on
    as its 32x32 pixels, so LitServe's worker never pays for a costly decode."""

    def __init__(self, app: Any, max_bytes: int = MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES, path: str = "/predict",
                 body_timeout: float = BODY_TIMEOUT):
        self.app = app
        self.max_bytes = max_bytes
        self.path = path
        self.body_timeout = body_timeout
        self.gate = DecodeGate()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        too_large = error_response(413, f"The upload is larger than the {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB limit.",
                                   close=True)
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.max_bytes:  # answered unread; the connection closes, as the body is not taken
            await too_large(scope, receive, send)
            return
        if not headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data"):
            await self.drain(receive, self.max_bytes, self.body_timeout)
            await error_response(400, f"Send the image as a multipart form with the file field '{FIELD}', "
                                      f"e.g. curl -F {FIELD}=@photo.jpg URL/predict.")(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                await error_response(408, f"The request body stopped arriving for {self.body_timeout:g} s: "
                                          "send the whole upload at once.", close=True)(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:  # a body longer than declared (or undeclared): answered, not read further
                await too_large(scope, receive, send)
                return
        body = b"".join(chunks)
        # LitServe answers a form that does not parse (a bad boundary, a truncated body) with a 500.
        try:
            form = await Request(scope, self.replay(body, receive)).form()
        except (MultiPartException, HTTPException) as error:
            message = getattr(error, "detail", None) or getattr(error, "message", str(error))
            await error_response(400, f"The multipart form could not be read: {message}")(scope, receive, send)
            return
        try:
            decoded = await self.decode_form(form)
        finally:
            await form.close()
        if isinstance(decoded, Rejected):
            await error_response(decoded.status, decoded.message)(scope, receive, send)
            return
        body, content_type = self.small_form(decoded)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"content-type")]
        headers += [(b"content-length", str(len(body)).encode()), (b"content-type", content_type)]
        await self.app(dict(scope, headers=headers), self.replay(body, receive), send)

    async def decode_form(self, form: Any) -> torch.Tensor | Rejected:
        read = upload_bytes(form.getlist(FIELD))
        return read if isinstance(read, Rejected) else await self.gate.decode(*read)

    @staticmethod
    def small_form(image: torch.Tensor) -> tuple[bytes, bytes]:
        """The decoded image as a form with one field, ``image``: its uint8 (3, 32, 32) pixels as
        ``PIXELS_TYPE``. Returns (body, content type)."""
        boundary = b"cifar-lightning-" + secrets.token_hex(12).encode()
        body = (b"--" + boundary + b"\r\n"
                + f'Content-Disposition: form-data; name="{FIELD}"; filename="{FIELD}.u8"\r\n'.encode()
                + f"Content-Type: {PIXELS_TYPE}\r\n\r\n".encode() + image.contiguous().numpy().tobytes()
                + b"\r\n--" + boundary + b"--\r\n")
        return body, b"multipart/form-data; boundary=" + boundary

    @staticmethod
    def replay(body: bytes, receive: Any) -> Any:
        """An ASGI ``receive`` that gives ``body`` once, then whatever the connection says (a disconnect)."""
        sent = False

        async def replay_receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay_receive

    @staticmethod
    async def drain(receive: Any, cap: int, timeout: float) -> None:
        """Read and drop the rest of a small body (up to ``cap`` bytes, none waited for longer than
        ``timeout``), so the client gets to read the answer."""
        read, more = 0, True
        while more and read < cap:
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                return
            if message["type"] == "http.disconnect":
                return
            read += len(message.get("body", b""))
            more = message.get("more_body", False)


async def json_http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Every HTTP error as ``{"error": ...}`` (FastAPI's default is ``{"detail": ...}``)."""
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


def build_server(checkpoint: dict | str, max_batch_size: int = 32, batch_timeout: float = 0.01,
                 tta_flip: bool | None = None, accelerator: str = "auto", body_timeout: float = BODY_TIMEOUT,
                 api_docs: bool = False, cors_origins: list[str] | None = None) -> ls.LitServer:
    """The ``LitServer``: ``ClassifierAPI`` at ``/predict``, the page at ``/``, errors as JSON; the API
    docs and ``/info`` only with ``api_docs``, cross-origin requests only from ``cors_origins``."""
    api = ClassifierAPI(checkpoint, tta_flip=tta_flip, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    middlewares: list = [(UploadLimit, {"body_timeout": body_timeout})]
    if cors_origins:
        middlewares.append((CORSMiddleware, {"allow_origins": list(cors_origins), "allow_methods": ["GET", "POST"]}))
    server = ls.LitServer(api, accelerator=accelerator, middlewares=middlewares, disable_openapi_url=not api_docs)
    app = server.app
    hidden = {"/"} | (set() if api_docs else set(DOCS_PATHS))
    app.router.routes = [route for route in app.router.routes if getattr(route, "path", None) not in hidden]
    html = page()

    async def index() -> HTMLResponse:
        return HTMLResponse(html)

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(HTTPException, json_http_error)
    return server


def check_port(host: str, port: int) -> None:
    if host not in HOSTS:
        raise UserInputError(f"--host must be one of {', '.join(HOSTS)} (LitServe's choices), got {host!r}.")
    if not 1024 <= port <= 65535:
        raise UserInputError(f"--port must be from 1024 to 65535, got {port}.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserInputError(f"Cannot listen on {host}:{port} ({error.strerror or error}). "
                                 "Another server may be using it: pass another --port.") from None


def serve(ckpt_path: str, port: int = 8000, host: str = "127.0.0.1", max_batch_size: int = 32,
          batch_timeout: float = 0.01, tta_flip: bool | None = None,
          accelerator: Literal["auto", "cpu", "cuda", "mps"] = "auto",
          log_level: Literal["debug", "info", "warning", "error"] = "info", body_timeout: float = BODY_TIMEOUT,
          keep_alive_timeout: int = KEEP_ALIVE_TIMEOUT, header_timeout: float = HEADER_TIMEOUT,
          api_docs: bool = False, cors_origins: list[str] | None = None) -> None:
    """Serve a checkpoint over HTTP with LitServe until Ctrl-C or SIGTERM.

    POST /predict (multipart field 'image') answers the top 3 classes as JSON; GET / is a web page to
    drop an image on; GET /health answers "ok" once the model is loaded. See docs/deploy.md.

    Args:
        ckpt_path: The checkpoint to serve, e.g. cifar_lightning/weights/cifar10_cnn.ckpt.
        port: TCP port (1024-65535).
        host: 127.0.0.1 (this machine only), 0.0.0.0 or :: (every network interface).
        max_batch_size: Most requests classified in one forward pass.
        batch_timeout: Seconds a batch waits to fill once its first request has come.
        tta_flip: Average each image with its mirror image (None: the checkpoint's setting).
        accelerator: Where the model runs (auto: LitServe's choice, a GPU where there is one).
        log_level: Server log level (debug, info, warning, error); info logs every request.
        body_timeout: Seconds an upload may stall before the request is answered 408 and closed.
        keep_alive_timeout: Seconds an idle keep-alive connection stays open.
        header_timeout: Seconds a request's headers may take to arrive before the client gets 408 and
            the connection is closed.
        api_docs: Serve the API docs (/docs, /redoc, /openapi.json) and LitServe's /info (off: not public).
        cors_origins: Origins whose pages may call the service from a browser, e.g. https://example.org
            (none: cross-origin requests are not allowed).
    """
    checkpoint = check_checkpoint(ckpt_path)  # the one read of the file: the worker builds the model from it
    check_port(host, port)
    if max_batch_size < 1 or batch_timeout < 0:
        raise UserInputError(f"--max_batch_size must be at least 1 and --batch_timeout at least 0, "
                             f"got {max_batch_size} and {batch_timeout}.")
    if body_timeout <= 0 or header_timeout <= 0 or keep_alive_timeout < 1:
        raise UserInputError(f"--body_timeout and --header_timeout must be above 0 and --keep_alive_timeout at "
                             f"least 1, got {body_timeout}, {header_timeout} and {keep_alive_timeout}.")
    server = build_server(checkpoint, max_batch_size, batch_timeout, tta_flip, accelerator, body_timeout, api_docs,
                          cors_origins)

    main_pid = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt  # LitServer.run shuts its workers down on KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)  # a forked API worker: end as it would have
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stop)
    server.run(host=host, port=port, generate_client_file=False, log_level=log_level,
               timeout_keep_alive=keep_alive_timeout, http=protocol_with_header_timeout(header_timeout))
