"""The app factory and the runner.

Starting the app starts every model's service (warm-up, batcher) in the background: ``/healthz`` answers at
once, ``/readyz`` once every model is ready, a /v1 route once the model it asked for is. A dead model process is fatal, as in vLLM: the server
answers 503, stops, and :func:`run` exits with status 1 so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvicorn
from fastapi import FastAPI

from deepsynth import envs
from deepsynth.inference.api.errors import install_exception_handlers
from deepsynth.inference.api.middleware import GuardMiddleware, ShutdownErrorsMiddleware
from deepsynth.inference.api.openapi import install_openapi
from deepsynth.inference.api.routers import admin, feedback, ocr, openai
from deepsynth.inference.api.settings import ServerSettings
from deepsynth.inference.api.state import ServerState
from deepsynth.inference.pool import ModelPool
from deepsynth.inference.service import OCRService
from deepsynth.observability.feedback import FeedbackStore
from deepsynth.observability.logging import uvicorn_log_config

log = logging.getLogger("deepsynth.server")


def create_app(models: OCRService | ModelPool, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving one service or a :class:`ModelPool`; its state is ``app.state.server``
    (:class:`ServerState`)."""
    if isinstance(models, OCRService):
        models = ModelPool({models.model_id: models})
    state = ServerState(models, settings or ServerSettings())
    if state.settings.feedback is not None:
        state.feedback = FeedbackStore(state.settings.feedback)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        starter = asyncio.create_task(_start(state))
        watcher = asyncio.create_task(_watch_engine(state))
        follower = asyncio.create_task(_follow_registry(state))
        try:
            yield
        finally:
            for task in (starter, watcher, follower):
                if not task.done():
                    task.cancel()
            await state.models.aclose(drain=True, timeout_s=state.settings.limits.drain_timeout_s)
            if state.feedback is not None:
                state.feedback.close()

    from deepsynth import __version__

    app = FastAPI(
        title="DeepSynth OCR",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if state.settings.docs else None,
        redoc_url=None,
    )
    app.state.server = state
    app.add_middleware(
        GuardMiddleware, settings=state.settings, on_error=lambda k: state.service.obs.record_error(k)
    )
    app.add_middleware(ShutdownErrorsMiddleware)
    install_exception_handlers(app)
    for surface in (ocr, openai, feedback, admin):
        app.include_router(surface.router)
    install_openapi(app)
    return app


async def _start(state: ServerState) -> None:
    try:
        await state.models.start(warmup=state.settings.warmup)
    except Exception as exc:  # keep serving /healthz; /readyz reports the failure
        log.exception("service failed to start")
        state.startup_error = f"{type(exc).__name__}: {exc}"


async def _watch_engine(state: ServerState) -> None:
    """A dead model process is fatal (as in vLLM): stop the server so its supervisor restarts it."""
    while True:
        # a service closed on purpose (shutdown drain, unload) is not dead
        dead = next((s for s in state.models.services if not s.engine.alive and not s.closing), None)
        if dead is not None:
            break
        await asyncio.sleep(state.settings.engine_check_s)
    log.error("the model process has exited; shutting the server down", extra={"model": dead.model_id})
    state.fatal = f"{dead.model_id}: {dead.not_ready_reason}"
    if state.on_fatal is not None:
        state.on_fatal()


async def _follow_registry(state: ServerState) -> None:
    """Every ``registry_poll_s``: reload the models served from a registry alias that has moved."""
    poll = state.settings.registry_poll_s
    if poll <= 0 or state.models.registry is None:
        return
    while True:
        await asyncio.sleep(poll)
        if not state.ready:  # not while the first load is still running
            continue
        try:
            await state.models.follow(
                warmup=state.settings.warmup, drain_timeout_s=state.settings.limits.drain_timeout_s
            )
        except Exception:  # noqa: BLE001 - the poll must outlive a registry outage
            log.exception("registry poll failed")


class _DrainingServer(uvicorn.Server):
    """uvicorn whose shutdown starts the service's drain at once: accepted requests get ``drain_s`` to finish,
    then get a JSON 503 ``shutting_down`` (before uvicorn's own graceful-shutdown window would cancel them)
    and the model process is stopped. A shutdown that completes exits with status 0 (uvicorn would re-raise
    SIGTERM: exit status 143)."""

    def __init__(self, config: uvicorn.Config, models: ModelPool, drain_s: float):
        super().__init__(config)
        self.models, self.drain_s = models, drain_s

    async def shutdown(self, sockets: Any = None) -> None:
        drain = asyncio.ensure_future(self.models.aclose(drain=True, timeout_s=self.drain_s))
        await super().shutdown(sockets)
        await drain
        self._captured_signals.clear()


def run(models: OCRService | ModelPool, settings: ServerSettings | None = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM drain accepted requests, then exit 0)."""
    settings = settings or ServerSettings()
    app = create_app(models, settings)
    # uvicorn's access log is off: every request is already logged once, as JSON with its request id and
    # timings, by deepsynth.observability (a second plain-text line per request costs CPU on the event loop)
    fmt = envs.DEEPSYNTH_LOG_FORMAT.lower()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=uvicorn_log_config(fmt) or uvicorn.config.LOGGING_CONFIG,  # start/stop lines as JSON too
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=settings.limits.drain_timeout_s + 10,  # a backstop: the drain ends first
    )
    state: ServerState = app.state.server
    server = _DrainingServer(config, state.models, settings.limits.drain_timeout_s)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if state.fatal:
        raise SystemExit(f"error: {state.fatal}")  # exit status 1: docker/systemd/k8s restart the server
