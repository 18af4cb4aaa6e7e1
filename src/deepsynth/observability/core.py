"""The :class:`Observability` facade the inference service calls: metrics, JSON logs, spans, sample store.

One instance per service. Every piece is independent and off-able; with tracing and the sample store off (the
default) a request costs two ``perf_counter`` calls, a histogram observation and one log record.

    obs = Observability.from_env(model_id="rapidocr")
    with obs.request("/v1/ocr") as ctx:          # request id → log context + root span
        with obs.stage("preprocess"):
            ...
        obs.record_stage("queue", seconds)        # a stage measured elsewhere (e.g. by the batcher)
        ...
    body, content_type = obs.exposition()         # GET /metrics

Environment (all optional): ``DEEPSYNTH_METRICS`` (1/0, default 1), ``DEEPSYNTH_LOG_FORMAT`` (json|text, default
json), ``DEEPSYNTH_LOG_LEVEL`` (default INFO), tracing per :mod:`deepsynth.observability.tracing`, sample store
per :mod:`deepsynth.observability.samples`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from deepsynth import envs
from deepsynth.observability.logging import configure_logging, request_id_var
from deepsynth.observability.tracing import Tracing

log = logging.getLogger("deepsynth.request")

_SAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")
_SAFE_LABEL = re.compile(r"[^A-Za-z0-9_.:-]")
MAX_ERROR_KINDS = 64


@dataclass
class RequestContext:
    """What is known about the request being handled; ``status`` may be set by the handler (e.g. ``"400"``)."""

    request_id: str
    route: str
    model_id: str
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    span: Any = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def timings_ms(self) -> dict[str, float]:
        return {k: round(v * 1000.0, 3) for k, v in self.timings.items()}


_current: ContextVar[RequestContext | None] = ContextVar("deepsynth_request_context", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def sanitize_request_id(value: str | None) -> str:
    """Client-supplied ids are kept if short and safe (they name files and log fields), else replaced."""
    if value:
        value = value.strip()
        if 0 < len(value) <= 64 and not _SAFE_ID.search(value):
            return value
    return new_request_id()


class Observability:
    """Metrics + structured logs + tracing + sample store for one served model (see module docstring)."""

    def __init__(
        self,
        model_id: str,
        *,
        registry: Any = None,
        metrics: bool = True,
        tracer_provider: Any = None,
        sample_store: Any = None,
        version: str = "",
    ) -> None:
        self.model_id = model_id
        self.metrics = None
        if metrics:
            from deepsynth.observability.metrics import ServiceMetrics

            self.metrics = ServiceMetrics(model_id, registry=registry, version=version)
        self.tracing = Tracing(tracer_provider)
        if sample_store is None:
            from deepsynth.observability.samples import NoopSampleStore

            sample_store = NoopSampleStore()
        self.samples = sample_store

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_env(
        cls, *, model_id: str, registry: Any = None, env: Mapping[str, str] | None = None
    ) -> Observability:
        """Build from ``DEEPSYNTH_*`` / ``OTEL_*`` variables (``env`` defaults to ``os.environ``)."""
        from deepsynth import __version__
        from deepsynth.observability.samples import sample_store_from_env

        env = os.environ if env is None else env
        fmt = envs.read("DEEPSYNTH_LOG_FORMAT", env).lower()
        configure_logging(envs.read("DEEPSYNTH_LOG_LEVEL", env), fmt)
        metrics = envs.read("DEEPSYNTH_METRICS", env)
        tracing = Tracing.from_env(env)
        obs = cls(
            model_id,
            registry=registry,
            metrics=metrics,
            sample_store=None,
            version=__version__,
        )
        obs.tracing = tracing
        obs.samples = sample_store_from_env(env, on_store=obs._count_stored, on_delete=obs._count_deleted)
        log.info(
            "observability configured",
            extra={
                "model": model_id,
                "metrics": metrics,
                "tracing": tracing.enabled,
                "samples": bool(getattr(obs.samples, "enabled", False)),
            },
        )
        return obs

    # ---------------------------------------------------------------- requests and stages
    @contextlib.contextmanager
    def request(
        self, route: str, request_id: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> Iterator[RequestContext]:
        """Scope one request: sets the request id for logs, opens the root span, records duration and status.

        ``headers`` (optional) may carry a W3C ``traceparent`` to join the caller's trace. An exception leaving
        the block marks the request ``error`` (unless the handler set another status) and is re-raised.
        """
        ctx = RequestContext(sanitize_request_id(request_id), route, self.model_id)
        rid_token = request_id_var.set(ctx.request_id)
        ctx_token = _current.set(ctx)
        m = self.metrics
        if m is not None:
            duration, in_flight = m.route(route)
            in_flight.inc()
        try:
            with self.tracing.span(
                "request",
                {
                    "deepsynth.route": route,
                    "deepsynth.model": self.model_id,
                    "deepsynth.request_id": ctx.request_id,
                },
                context=self.tracing.extract(headers),
            ) as span:
                ctx.span = span
                try:
                    yield ctx
                except BaseException as exc:
                    cancelled = type(exc).__name__ == "CancelledError"  # the client went away
                    if ctx.status == "ok":
                        code = getattr(exc, "status_code", None)  # e.g. fastapi.HTTPException
                        ctx.status = "cancelled" if cancelled else str(code) if code else "error"
                    self.record_error("cancelled" if cancelled else type(exc).__name__)
                    raise
                finally:
                    if span is not None:
                        span.set_attribute("deepsynth.status", ctx.status)
        finally:
            elapsed = ctx.elapsed()
            if m is not None:
                if ctx.model_id != self.model_id:  # routed to another model (see assign_model)
                    duration = m.request_duration.labels(route, ctx.model_id)
                    in_flight = m.in_flight.labels(route, ctx.model_id)
                duration.observe(elapsed)
                in_flight.dec()
                m.requests.labels(route, ctx.model_id, ctx.status).inc()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "request finished",
                    extra={
                        "route": route,
                        "model": ctx.model_id,
                        "status": ctx.status,
                        "duration_ms": round(elapsed * 1000.0, 3),
                        "stages_ms": ctx.timings_ms(),
                    },
                )
            _current.reset(ctx_token)
            request_id_var.reset(rid_token)

    def assign_model(self, ctx: RequestContext, model_id: str) -> None:
        """The request was routed to ``model_id`` (a server with several models): its request metrics (in
        flight, duration, count, errors) and its log line carry that model's label from now on."""
        if ctx.model_id == model_id:
            return
        if self.metrics is not None:
            self.metrics.in_flight.labels(ctx.route, ctx.model_id).dec()
            self.metrics.in_flight.labels(ctx.route, model_id).inc()
        ctx.model_id = model_id
        if ctx.span is not None:
            ctx.span.set_attribute("deepsynth.model", model_id)

    @contextlib.contextmanager
    def stage(self, name: str, **attrs: Any) -> Iterator[None]:
        """Time a stage (``preprocess`` | ``queue`` | ``model`` | ``postprocess``) of the current request."""
        t0 = time.perf_counter()
        try:
            with self.tracing.span(name, attrs or None):
                yield
        finally:
            self._finish_stage(name, time.perf_counter() - t0)

    def record_stage(self, name: str, seconds: float, *, end_ns: int | None = None, **attrs: Any) -> None:
        """Record a stage measured elsewhere (e.g. queue wait inside the batcher) that ended at ``end_ns``
        (``time.time_ns()``; default now). Adds the duration, a span and a log line like :meth:`stage`."""
        if self.tracing.enabled:
            end = end_ns if end_ns is not None else time.time_ns()
            self.tracing.span_at(name, end - int(seconds * 1e9), end, attrs or None)
        self._finish_stage(name, seconds)

    def _finish_stage(self, name: str, seconds: float) -> None:
        ctx = _current.get()
        if ctx is not None:
            ctx.timings[name] = ctx.timings.get(name, 0.0) + seconds
        if self.metrics is not None:
            self.metrics.stage(name).observe(seconds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stage finished", extra={"stage": name, "duration_ms": round(seconds * 1000.0, 3)})

    def current(self) -> RequestContext | None:
        """The request being handled in this context (None outside :meth:`request`)."""
        return _current.get()

    # ---------------------------------------------------------------- counters
    def record_batch(self, size: int, queue_depth: int) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(size)
            self.metrics.queue_depth.set(queue_depth)

    def watch_model_process(
        self, pid: Callable[[], int | None], gpu_memory: Callable[[], list[tuple[str, str, float]]]
    ) -> None:
        """The model runs in another process: export its CPU and memory as ``deepsynth_model_process_*`` and
        take ``deepsynth_gpu_memory_bytes`` from its report (this process holds no CUDA memory)."""
        if self.metrics is not None:
            self.metrics.watch_model_process(pid, gpu_memory)

    def record_queue_depth(self, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(depth)

    def record_result(
        self,
        *,
        pages: int = 0,
        lines: int = 0,
        tokens: int = 0,
        repetition: bool = False,
        truncated: bool = False,
        empty: bool = False,
        confidence: float | None = None,
        doc_type: str | None = None,
    ) -> None:
        """Count one output (a page): its size and quality signals, labelled by model and ``doc_type``."""
        m = self.metrics
        if m is None:
            return
        if pages:
            m.pages.inc(pages)
        if lines:
            m.lines.inc(lines)
        if tokens:
            m.tokens.inc(tokens)
        labels = (m.model_id, self._doc_label(doc_type))
        m.outputs.labels(*labels).inc()
        if repetition:
            m.repetitions.labels(*labels).inc()
        if truncated:
            m.truncations.labels(*labels).inc()
        if empty:
            m.empty_outputs.labels(*labels).inc()
        if confidence is not None and math.isfinite(confidence):
            m.confidence.labels(*labels).observe(confidence)

    def record_error(self, kind: str) -> None:
        """Count an error by a short type name (e.g. ``bad_image``, ``timeout``, an exception class name)."""
        kind = _SAFE_LABEL.sub("_", str(kind))[:64] or "unknown"
        if self.metrics is not None:
            if (
                kind not in self.metrics._error_children
                and len(self.metrics._error_children) >= MAX_ERROR_KINDS
            ):
                kind = "other"
            ctx = _current.get()
            if ctx is not None and ctx.model_id != self.model_id:  # a request routed to another model
                self.metrics.errors.labels(kind, ctx.model_id).inc()
            else:
                self.metrics.error(kind).inc()
        log.warning("error recorded", extra={"error_type": kind})

    def record_feedback(self, model_id: str | None, doc_type: str) -> None:
        """Count a stored correction of ``model_id``'s output (None: sent with its image) of ``doc_type``."""
        if self.metrics is not None:
            self.metrics.feedback_stored.labels(model_id or "unknown", self._doc_label(doc_type)).inc()

    def _doc_label(self, doc_type: str | None) -> str:
        assert self.metrics is not None
        return self.metrics.doc_type(_SAFE_LABEL.sub("_", doc_type)[:32] if doc_type else None)

    # ---------------------------------------------------------------- samples and exposition
    def maybe_store_sample(
        self, request_id: str, image: Any, text: str, timings: Mapping[str, float], model_id: str
    ) -> None:
        """Hand the request to the sample store (which samples, redacts and writes in the background)."""
        if self.samples.enabled:
            self.samples.maybe_store(request_id, image, text, timings, model_id)

    def _count_stored(self, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.samples_stored.inc(n)

    def _count_deleted(self, reason: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.samples_deleted.labels(reason).inc(n)

    def exposition(self) -> tuple[bytes, str]:
        """Body and content type for ``GET /metrics`` (empty body when metrics are off)."""
        if self.metrics is None:
            return b"", "text/plain; version=0.0.4; charset=utf-8"
        return self.metrics.exposition()

    def close(self) -> None:
        """Flush pending samples and spans (call on shutdown)."""
        self.samples.close()
        self.tracing.shutdown()
