"""What the routers share: the service, the settings and the server's own state (kept on ``app.state``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

from deepsynth.inference.api.errors import Unavailable, failure
from deepsynth.inference.api.settings import ServerSettings
from deepsynth.inference.service import OCRService
from deepsynth.observability.core import RequestContext

log = logging.getLogger("deepsynth.server")


@dataclass
class ServerState:
    service: OCRService
    settings: ServerSettings
    created: int = field(default_factory=lambda: int(time.time()))
    startup_error: str | None = None
    fatal: str | None = None  # set when the model process died: the server exits with status 1
    on_fatal: Callable[[], None] | None = None  # set by run(): stops uvicorn

    @property
    def not_ready_reason(self) -> str:
        return self.startup_error or self.service.not_ready_reason


def server_state(request: Request) -> ServerState:
    return request.app.state.server


async def scoped(
    request: Request, route: str, handler: Callable[[ServerState, RequestContext], Awaitable[Response]]
) -> Response:
    """Run a /v1 handler in the request's observability scope; every failure becomes a JSON error that is
    counted by kind. The response carries the request id."""
    state = server_state(request)
    obs = state.service.obs
    with obs.request(route, request.headers.get("x-request-id"), headers=request.headers) as ctx:
        try:
            if not state.service.ready:
                raise Unavailable(state.not_ready_reason)
            response = await handler(state, ctx)
        except Exception as exc:  # noqa: BLE001 - every failure is answered, in one shape
            err = failure(exc, unexpected="model_error")
            if err.kind == "model_error":
                log.exception("request failed")
            ctx.status = str(err.status)
            obs.record_error(err.kind)
            response = err.response()
        response.headers["X-Request-ID"] = ctx.request_id
        return response
