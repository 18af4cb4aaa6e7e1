"""Pure ASGI middleware: the /v1 guard (token, body size) and JSON errors for what escapes the app."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any

from deepsynth.inference.api.errors import error_response
from deepsynth.inference.api.settings import ServerSettings
from deepsynth.inference.inputs import InputError

log = logging.getLogger("deepsynth.server")


class TrackedSend:
    """An ASGI ``send`` that remembers whether the response has started (then no error can be sent)."""

    def __init__(self, send: Callable):
        self.send = send
        self.started = False

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class GuardMiddleware:
    """For /v1/*: bearer-token auth, then the body size limit, checked against Content-Length up front and
    counted while the body streams in (chunked uploads) — before anything parses it."""

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
            await self._reject(self._too_large(int(length)), scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(received)
            return message

        tracked = TrackedSend(send)
        try:
            await self.app(scope, limited_receive, tracked)
        except InputError as exc:  # raised by limited_receive outside a handler's error mapping
            if tracked.started:
                raise
            await self._reject(exc, scope, receive, send)

    def _too_large(self, size: int) -> InputError:
        limit = self.settings.limits.max_upload_mb
        return InputError(
            413,
            "upload_too_large",
            f"request body is larger than the {limit:g} MB limit (got {size / 2**20:.1f} MB)",
        )

    async def _reject(self, exc: InputError, scope: dict, receive: Callable, send: Callable) -> None:
        self.on_error(exc.kind)
        await error_response(exc.status, exc.kind, str(exc), exc.param)(scope, receive, send)


class ShutdownErrorsMiddleware:
    """A request cancelled by the server (its graceful-shutdown window ran out) still gets a JSON 503 in the
    API's error shape, not the server's plain-text 500; the cancellation then goes on."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not tracked.started:
                log.warning("request cancelled by the server's shutdown", extra={"path": scope["path"]})
                resp = error_response(
                    503,
                    "shutting_down",
                    "the server is shutting down; retry on another instance or later",
                    **{"Retry-After": "5", "Connection": "close"},
                )
                await resp(scope, receive, send)
            raise
