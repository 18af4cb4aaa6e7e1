"""OpenTelemetry spans for the request stages, configured by the standard ``OTEL_*`` environment variables.

Tracing is **off by default**. It turns on when any of these is set (and ``OTEL_SDK_DISABLED`` is not true):
``DEEPSYNTH_TRACING=1``, ``OTEL_TRACES_EXPORTER`` (``otlp`` | ``console``; ``none`` keeps it off),
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``. The OTLP exporter then reads its
endpoint/headers/protocol (``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``: ``http/protobuf`` default, or ``grpc``)
from the environment, the resource reads ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` and the sampler
``OTEL_TRACES_SAMPLER[_ARG]`` — all by the SDK itself. If the process already installed an SDK
``TracerProvider`` globally (e.g. ``opentelemetry-instrument`` or a test), DeepSynth adds its spans to it.

When off, :meth:`Tracing.span` returns one shared no-op context manager: no OpenTelemetry import, no allocation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from deepsynth import envs
from deepsynth.envs import parse_bool

_NULL = contextlib.nullcontext()
INSTRUMENTATION_NAME = "deepsynth"


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for tracing (see module docstring)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip() and parse_bool(env["OTEL_SDK_DISABLED"]):
        return False
    flag = envs.read("DEEPSYNTH_TRACING", env)
    if flag is not None:
        return flag
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def build_tracer_provider(env: Mapping[str, str] | None = None) -> tuple[Any, bool]:
    """(provider, owned): the global SDK TracerProvider if one is installed (not owned), else a new one
    exporting as the env says (owned: :meth:`Tracing.shutdown` shuts it down)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current, False
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "deepsynth"})
    provider = TracerProvider(resource=resource)
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    for name in names:
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            if protocol.strip() == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter(endpoint=endpoint or base or None)
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                if not endpoint and base:
                    endpoint = base.rstrip("/") + "/v1/traces"
                exporter = OTLPSpanExporter(endpoint=endpoint or None)
        elif name == "none":
            continue
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported (use otlp, console or none)")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, True


class Tracing:
    """Thin wrapper: ``span(name, **attrs)`` and ``span_at(name, start_ns, end_ns)``; no-ops when disabled."""

    def __init__(self, tracer_provider: Any = None, *, owned: bool = False) -> None:
        self.enabled = tracer_provider is not None
        self.provider = tracer_provider
        self.owned = owned
        self._tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME) if self.enabled else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tracing:
        if not tracing_requested(env):
            return cls(None)
        provider, owned = build_tracer_provider(env)
        return cls(provider, owned=owned)

    def span(self, name: str, attributes: dict[str, Any] | None = None, context: Any = None):
        """Context manager opening a span that becomes current (child of the current span or ``context``)."""
        if self._tracer is None:
            return _NULL
        return self._tracer.start_as_current_span(name, context=context, attributes=attributes)

    def extract(self, headers: Mapping[str, str] | None) -> Any:
        """Parent context from W3C ``traceparent`` headers (None when off or absent)."""
        if self._tracer is None or not headers:
            return None
        from opentelemetry.propagate import extract

        return extract(dict(headers))

    def span_at(
        self, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None
    ) -> None:
        """Record an already-finished span (e.g. queue wait measured by the batcher) under the current span."""
        if self._tracer is None:
            return
        span = self._tracer.start_span(name, attributes=attributes, start_time=start_ns)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Export pending spans; stop the exporter threads of a provider we built (not a borrowed global one)."""
        if self.provider is None:
            return
        if self.owned:
            self.provider.shutdown()
            self.provider, self._tracer, self.enabled = None, None, False
        elif hasattr(self.provider, "force_flush"):
            self.provider.force_flush()
