"""What the routers share: the models, the settings and the server's own state (kept on ``app.state``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from contextvars import ContextVar
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

from deepsynth.inference.api.errors import Unavailable, failure
from deepsynth.inference.api.settings import ServerSettings
from deepsynth.inference.inputs import InputError
from deepsynth.inference.pool import ModelPool
from deepsynth.inference.service import OCRService
from deepsynth.observability.core import RequestContext
from deepsynth.observability.feedback import FeedbackStore

log = logging.getLogger("deepsynth.server")
# the models held by the request being handled (released when its scope ends; see ServerState.select)
_leases: ContextVar[ExitStack | None] = ContextVar("deepsynth_model_leases", default=None)


@dataclass
class ServerState:
    models: ModelPool
    settings: ServerSettings
    created: int = field(default_factory=lambda: int(time.time()))
    startup_error: str | None = None
    fatal: str | None = None  # set when the model process died: the server exits with status 1
    on_fatal: Callable[[], None] | None = None  # set by run(): stops uvicorn
    feedback: FeedbackStore | None = None  # POST /v1/feedback and the inputs it may refer to (None: off)

    @property
    def service(self) -> OCRService:
        """The default model's service (its observability scopes every request)."""
        return self.models.models[self.models.default].service

    @property
    def ready(self) -> bool:
        return not self.startup_error and all(s.ready for s in self.models.services)

    @property
    def not_ready_reason(self) -> str:
        if self.startup_error:
            return self.startup_error
        return next((f"{n}: {m.service.not_ready_reason}" for n, m in self.models.models.items()
                     if not m.service.ready), "")  # fmt: skip

    def select(
        self, ctx: RequestContext, model: str | None = None, doc_type: str | None = None
    ) -> OCRService:
        """The service of the model the request asked for (by name, else by doc type, else the default),
        held until the request ends; its metrics and logs are labelled with that model from now on (an
        unknown model's with ``model=""``)."""
        leases = _leases.get()
        if leases is None:
            raise RuntimeError("select() is only valid inside scoped()")
        try:
            service = leases.enter_context(self.models.lease(model, doc_type))
        except InputError as exc:
            if exc.kind == "model_not_found":  # counted under no model's label, not the default's
                self.service.obs.assign_model(ctx, "")
            raise
        if not service.ready:
            raise Unavailable(self.startup_error or f"model {service.model_id!r}: {service.not_ready_reason}")
        self.service.obs.assign_model(ctx, service.model_id)
        return service


def server_state(request: Request) -> ServerState:
    return request.app.state.server


async def scoped(
    request: Request, route: str, handler: Callable[[ServerState, RequestContext], Awaitable[Response]]
) -> Response:
    """Run a /v1 handler in the request's observability scope; every failure becomes a JSON error that is
    counted by kind. The response carries the request id."""
    state = server_state(request)
    obs = state.service.obs
    leases = ExitStack()
    token = _leases.set(leases)
    try:
        with leases, obs.request(route, request.headers.get("x-request-id"), headers=request.headers) as ctx:
            try:
                if state.startup_error:
                    raise Unavailable(state.startup_error)
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
    finally:
        _leases.reset(token)
