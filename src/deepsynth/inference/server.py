"""The HTTP API (FastAPI): a thin layer over :class:`~deepsynth.inference.service.OCRService`.

Routes: ``POST /v1/ocr`` (multipart images/PDFs or JSON base64), ``POST /v1/chat/completions`` (OpenAI-compatible,
images as data URIs only), ``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics``.
Errors are JSON in OpenAI's shape ``{"error": {"message", "type", "code", "param"}}``; a user's bad file is
always a 4xx. A full queue answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepsynth.inference.batcher import BatcherClosed, QueueFull
from deepsynth.inference.inputs import (
    InputError,
    PageInput,
    decode_base64,
    decode_file,
    is_pdf,
)
from deepsynth.inference.limits import RequestBudget, ServingLimits
from deepsynth.inference.model_process import ModelProcessDied
from deepsynth.inference.service import OCRService
from deepsynth.models.base import Prediction

log = logging.getLogger("deepsynth.server")


@dataclass
class ServerSettings:
    """HTTP-level settings (the batching knobs live on the service)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token required on /v1/* when set
    warmup: bool = True
    engine_check_s: float = 1.0  # how often the server checks that the model process is alive
    limits: ServingLimits = field(default_factory=ServingLimits)  # every resource budget

    def budget(self, service: OCRService, dpi: float | None = None) -> RequestBudget:
        """A fresh budget for one request (at the request's own PDF resolution, if it asked for one)."""
        limits = dataclasses.replace(self.limits, pdf_dpi=dpi) if dpi else self.limits
        return RequestBudget(limits, service.geometry)


def error_body(status: int, kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status, "param": param}}


def error_response(
    status: int, kind: str, message: str, param: str | None = None, **headers: str
) -> JSONResponse:
    return JSONResponse(error_body(status, kind, message, param), status_code=status, headers=headers or None)


class GuardMiddleware:
    """Pure ASGI middleware for /v1/*: bearer-token auth, then the upload size limit (checked against
    Content-Length up front and counted while the body streams in, for chunked uploads)."""

    def __init__(self, app: Any, settings: ServerSettings, on_error: Callable[[str], None]):
        self.app = app
        self.settings = settings
        self.max_bytes = settings.limits.max_upload_bytes
        self.on_error = on_error

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.settings.token:
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), self.settings.token):
                self.on_error("unauthorized")
                resp = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                    **{"WWW-Authenticate": "Bearer"},
                )
                await resp(scope, receive, send)
                return
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send, int(length))
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large_error(received)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except InputError as exc:  # raised by limited_receive outside a handler's error mapping
            if started:
                raise
            self.on_error(exc.kind)
            await error_response(exc.status, exc.kind, str(exc))(scope, receive, send)

    def _too_large_error(self, size: int) -> InputError:
        limit = self.settings.limits.max_upload_mb
        return InputError(
            413,
            "upload_too_large",
            f"request body is larger than the {limit:g} MB limit (got {size / 2**20:.1f} MB)",
        )

    async def _too_large(self, scope: dict, receive: Callable, send: Callable, size: int) -> None:
        exc = self._too_large_error(size)
        self.on_error(exc.kind)
        await error_response(exc.status, exc.kind, str(exc))(scope, receive, send)


def create_app(service: OCRService, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``service``. Starting the app starts the service (warm-up, batcher) in the
    background: ``/healthz`` answers at once, ``/readyz`` and the /v1 routes once the model is ready."""
    settings = settings or ServerSettings()
    obs = service.obs
    created = int(time.time())
    state: dict[str, Any] = {"startup_error": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def start() -> None:
            try:
                await service.start(warmup=settings.warmup)
            except Exception as exc:  # keep serving /healthz; /readyz reports the failure
                log.exception("service failed to start")
                state["startup_error"] = f"{type(exc).__name__}: {exc}"

        async def watch_engine() -> None:
            """A dead model process is fatal (as in vLLM): stop the server so its supervisor restarts it."""
            while getattr(service.engine, "alive", True):
                await asyncio.sleep(settings.engine_check_s)
            log.error(
                "the model process has exited; shutting the server down", extra={"model": service.model_id}
            )
            app.state.fatal = service.not_ready_reason
            on_fatal = getattr(app.state, "on_fatal", None)
            if on_fatal is not None:
                on_fatal()

        starter = asyncio.create_task(start())
        watcher = asyncio.create_task(watch_engine())
        try:
            yield
        finally:
            for task in (starter, watcher):
                if not task.done():
                    task.cancel()
            await asyncio.wait_for(service.aclose(drain=True), settings.limits.drain_timeout_s)

    app = FastAPI(title="DeepSynth OCR", version=_version(), lifespan=lifespan)
    app.add_middleware(GuardMiddleware, settings=settings, on_error=obs.record_error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail))

    async def handle(route: str, request: Request, fn: Callable[[Any], Awaitable[Response]]) -> Response:
        """Run a /v1 handler inside the request scope and turn every failure into a JSON error."""
        rid = request.headers.get("x-request-id")
        with obs.request(route, rid, headers=request.headers) as ctx:
            try:
                if not service.ready:
                    why = state["startup_error"] or service.not_ready_reason
                    raise _Unavailable(why)
                response = await fn(ctx)
            except InputError as exc:
                response = _fail(ctx, exc.status, exc.kind, str(exc), exc.param)
            except QueueFull as exc:
                response = _fail(ctx, 429, "queue_full", str(exc), headers={"Retry-After": "1"})
            except (BatcherClosed, _Unavailable, ModelProcessDied) as exc:
                response = _fail(ctx, 503, "unavailable", str(exc), headers={"Retry-After": "5"})
            except TimeoutError as exc:
                response = _fail(ctx, 504, "timeout", str(exc) or "the model did not answer in time")
            except Exception as exc:
                log.exception("request failed")
                response = _fail(
                    ctx, 500, "model_error", f"the model failed on this input: {type(exc).__name__}: {exc}"
                )
            response.headers["X-Request-ID"] = ctx.request_id
            return response

    def _fail(
        ctx: Any, status: int, kind: str, message: str, param: str | None = None, headers=None
    ) -> JSONResponse:
        ctx.status = str(status)
        obs.record_error(kind)
        return error_response(status, kind, message, param, **(headers or {}))

    async def read_pages(request: Request) -> tuple[list[PageInput], dict[str, Any]]:
        """Pages + generation overrides from a multipart form or a JSON body."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            return await _read_multipart(request, settings, service)
        if ctype == "application/json":
            return await _read_json_pages(request, settings, service)
        raise InputError(
            415,
            "unsupported_media_type",
            f"content type {ctype or '(none)'!r} is not accepted; send multipart/form-data files or application/json",
        )

    @app.post("/v1/ocr")
    async def ocr(request: Request) -> Response:
        async def run(ctx: Any) -> Response:
            with obs.stage("preprocess"):
                pages, overrides = await read_pages(request)
                gen = _resolve_generation(service, overrides)
            preds = await service.recognize_async([p.image for p in pages], gen)
            with obs.stage("postprocess"):
                out_pages = [_page_json(p, pred) for p, pred in zip(pages, preds, strict=True)]
                _record(obs, ctx, pages, preds, service.model_id)
            return JSONResponse(
                {
                    "id": ctx.request_id,
                    "object": "ocr.result",
                    "model": service.model_id,
                    "pages": out_pages,
                    "text": "\n\n".join(p["text"] for p in out_pages),
                    "timings": _timings(ctx),
                }
            )

        return await handle("/v1/ocr", request, run)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        async def run(ctx: Any) -> Response:
            with obs.stage("preprocess"):
                body = await _json_body(request)
                pages, overrides, stream = await _read_chat(body, service, settings)
                gen = _resolve_generation(service, overrides)
            preds = await service.recognize_async([p.image for p in pages], gen)
            with obs.stage("postprocess"):
                text = "\n\n".join(p.text for p in preds)
                finish = "length" if any(p.finished is False for p in preds) else "stop"
                tokens = sum(p.num_tokens or 0 for p in preds)
                _record(obs, ctx, pages, preds, service.model_id)
            cid = f"chatcmpl-{ctx.request_id}"
            if stream:
                return StreamingResponse(
                    _sse_chunks(cid, int(time.time()), service.model_id, text, finish),
                    media_type="text/event-stream",
                )
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": service.model_id,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
                    "timings": _timings(ctx),
                }
            )

        return await handle("/v1/chat/completions", request, run)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": service.model_id,
                    "object": "model",
                    "created": created,
                    "owned_by": "deepsynth",
                    "limits": settings.limits.as_dict(),
                }
            ],
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready", "model": service.model_id})
        reason = state["startup_error"] or service.not_ready_reason
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        obs.record_queue_depth(service.batcher.queue_depth)
        body, content_type = obs.exposition()
        return Response(body, media_type=content_type)

    app.state.service = service
    app.state.settings = settings
    app.state.fatal = None
    return app


class _Unavailable(RuntimeError):
    pass


def _version() -> str:
    from deepsynth import __version__

    return __version__


def _resolve_generation(service: OCRService, overrides: dict[str, Any]):
    try:
        return service.resolve_generation(overrides)
    except (TypeError, ValueError) as exc:
        raise InputError(400, "invalid_generation", str(exc), "generation") from exc


async def _json_body(request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise InputError(
            415, "unsupported_media_type", f"content type {ctype or '(none)'!r}; send application/json"
        )
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(400, "invalid_json", f"request body is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise InputError(400, "invalid_json", "request body must be a JSON object")
    return body


# Small images are decoded on the event loop (well under a millisecond, less than the hand-off to a thread
# costs); bigger ones (by bytes or by the pixel count in their header) and every PDF go to a worker thread.
INLINE_DECODE_BYTES = 256 * 1024
INLINE_DECODE_PIXELS = 1_000_000


def _decode_inline(files: list[tuple[bytes, str, str | None]]) -> bool:
    if sum(len(data) for data, _, _ in files) > INLINE_DECODE_BYTES:
        return False
    pixels = 0
    for data, _, _ in files:
        if is_pdf(data):
            return False
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                pixels += img.width * img.height * getattr(img, "n_frames", 1)
        except Exception:  # noqa: BLE001 - not readable here: the thread path reports it properly
            return False
    return pixels <= INLINE_DECODE_PIXELS


async def _decode_all(files: list[tuple[bytes, str, str | None]], budget: RequestBudget) -> list[PageInput]:
    """Decode files into pages: small images inline, big ones and PDFs in a worker thread."""

    def work() -> list[PageInput]:
        pages: list[PageInput] = []
        for data, name, ctype in files:
            pages.extend(decode_file(data, name, ctype, budget=budget))
        return pages

    if not files:
        raise InputError(400, "no_input", "no image or PDF in the request")
    if _decode_inline(files):
        return work()
    return await asyncio.to_thread(work)


def _parse_dpi(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        dpi = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(400, "invalid_request", f"dpi must be a number, got {value!r}", "dpi") from exc
    if not 36 <= dpi <= 600:
        raise InputError(400, "invalid_request", f"dpi must be between 36 and 600, got {dpi:g}", "dpi")
    return dpi


def _parse_generation(value: Any) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(
                400, "invalid_generation", f"generation is not valid JSON ({exc})", "generation"
            ) from exc
    if not isinstance(value, dict):
        raise InputError(400, "invalid_generation", "generation must be a JSON object", "generation")
    return value


async def _read_multipart(
    request: Request, settings: ServerSettings, service: OCRService
) -> tuple[list[PageInput], dict[str, Any]]:
    try:
        form = await request.form(max_files=settings.limits.max_pages, max_fields=32)
    except InputError:
        raise
    except StarletteHTTPException as exc:
        raise InputError(
            400, "invalid_multipart", f"could not parse the multipart body: {exc.detail}"
        ) from exc
    except Exception as exc:
        raise InputError(400, "invalid_multipart", f"could not parse the multipart body: {exc}") from exc
    try:
        files: list[tuple[bytes, str, str | None]] = []
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((await value.read(), value.filename or key, value.content_type))
            elif key in {"dpi", "generation"}:
                fields[key] = value
            else:
                raise InputError(
                    400, "invalid_request", f"unknown form field {key!r}; known: dpi, generation", key
                )
    finally:
        await form.close()
    budget = settings.budget(service, _parse_dpi(fields.get("dpi")))
    return await _decode_all(files, budget), _parse_generation(fields.get("generation"))


async def _read_json_pages(
    request: Request, settings: ServerSettings, service: OCRService
) -> tuple[list[PageInput], dict[str, Any]]:
    body = await _json_body(request)
    unknown = sorted(set(body) - {"images", "dpi", "generation"})
    if unknown:
        raise InputError(
            400, "invalid_request", f"unknown field(s) {unknown}; known: images, dpi, generation"
        )
    items = body.get("images")
    if not isinstance(items, list) or not items:
        raise InputError(
            400, "no_input", "'images' must be a non-empty list of base64 strings or data URIs", "images"
        )
    files = []
    for i, item in enumerate(items):
        name = f"images[{i}]"
        if isinstance(item, dict):
            name = str(item.get("name") or name)
            item = item.get("data")
        data, mime = decode_base64(item, name)
        files.append((data, name, mime))
    budget = settings.budget(service, _parse_dpi(body.get("dpi")))
    return await _decode_all(files, budget), _parse_generation(body.get("generation"))


async def _read_chat(
    body: dict[str, Any], service: OCRService, settings: ServerSettings
) -> tuple[list[PageInput], dict[str, Any], bool]:
    model_id = service.model_id
    model = body.get("model")
    if model not in (None, "", model_id):
        raise InputError(
            404, "model_not_found", f"model {model!r} is not served here; this server serves {model_id!r}"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError(400, "invalid_request", "'messages' must be a non-empty list", "messages")
    if body.get("n", 1) not in (1, None):
        raise InputError(400, "invalid_request", "only n=1 is supported", "n")
    files: list[tuple[bytes, str, str | None]] = []
    prompt_parts: list[str] = []
    for mi, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InputError(400, "invalid_request", f"messages[{mi}] must be an object", "messages")
        content = msg.get("content")
        if msg.get("role") != "user":
            continue
        if isinstance(content, str):
            prompt_parts.append(content)
            continue
        if not isinstance(content, list):
            raise InputError(
                400, "invalid_request", f"messages[{mi}].content must be a string or a list", "messages"
            )
        for pi, part in enumerate(content):
            where = f"messages[{mi}].content[{pi}]"
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype == "text":
                prompt_parts.append(str(part.get("text", "")))
            elif ptype == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                data, mime = decode_base64(url, f"{where}.image_url.url")
                files.append((data, f"image {len(files) + 1}", mime))
            else:
                raise InputError(
                    400, "invalid_request", f"{where}: unsupported content part type {ptype!r}", where
                )
    if not files:
        raise InputError(
            400, "no_input", "no image in the messages (send an image_url part with a data: URI)"
        )
    overrides: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise InputError(400, "invalid_request", "max_tokens must be a positive integer", "max_tokens")
        overrides["max_new_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or temperature < 0:
            raise InputError(400, "invalid_request", "temperature must be a number >= 0", "temperature")
        if temperature > 0:
            overrides.update(do_sample=True, temperature=float(temperature))
    if body.get("top_p") is not None:
        overrides["top_p"] = float(body["top_p"])
    prompt = "\n".join(p for p in prompt_parts if p.strip())
    if prompt:
        overrides["prompt"] = prompt
    pages = await _decode_all(files, settings.budget(service))
    return pages, overrides, bool(body.get("stream"))


async def _sse_chunks(cid: str, created: int, model: str, text: str, finish: str):
    def chunk(delta: dict[str, Any], finish_reason: str | None) -> str:
        payload = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    yield chunk({"content": text}, None)
    yield chunk({}, finish)
    yield "data: [DONE]\n\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _page_json(page: PageInput, pred: Prediction) -> dict[str, Any]:
    return {
        "source": page.source,
        "page": page.page,
        "width": page.image.width,
        "height": page.image.height,
        "text": pred.text,
        "confidence": _jsonable(pred.confidence),
        "finished": pred.finished,
        "num_tokens": pred.num_tokens,
        "lines": _jsonable(pred.lines),
        "repetition": bool(pred.meta.get("repetition", False)),
        "truncated": bool(pred.meta.get("truncated", False)),
        "retries": int(pred.meta.get("retries", 0)),
    }


def _record(obs: Any, ctx: Any, pages: list[PageInput], preds: list[Prediction], model_id: str) -> None:
    for page, pred in zip(pages, preds, strict=True):
        obs.record_result(
            pages=1,
            lines=len(pred.lines) or (1 if pred.text else 0),
            tokens=pred.num_tokens or 0,
            repetition=bool(pred.meta.get("repetition")),
            truncated=bool(pred.meta.get("truncated")),
        )
        obs.maybe_store_sample(ctx.request_id, page.image, pred.text, dict(ctx.timings), model_id)


def _timings(ctx: Any) -> dict[str, float]:
    out = {f"{k}_ms": v for k, v in ctx.timings_ms().items()}
    out["total_ms"] = round(ctx.elapsed() * 1000.0, 3)
    return out


def run(service: OCRService, settings: ServerSettings | None = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM drain accepted requests before exit)."""
    import uvicorn

    settings = settings or ServerSettings()
    app = create_app(service, settings)
    # uvicorn's access log is off: every request is already logged once, as JSON with its request id and
    # timings, by deepsynth.observability (a second plain-text line per request costs CPU on the event loop)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    app.state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if app.state.fatal:
        raise SystemExit(f"error: {app.state.fatal}")  # exit status 1: docker/systemd/k8s restart the server
