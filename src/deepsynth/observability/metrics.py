"""Prometheus metrics of an OCR service, on a private :class:`~prometheus_client.CollectorRegistry`.

Names follow Prometheus conventions (``deepsynth_`` prefix, base units, ``_total`` counters, ``_seconds``,
``_bytes``). Each :class:`ServiceMetrics` owns its registry, so several services (or tests) in one process never
collide; pass ``registry=`` to share one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
from prometheus_client.process_collector import ProcessCollector

# OCR latencies run from a few ms (one line on ONNX) to minutes (a VLM page on CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# a model's mean confidence per output (CTC mean max probability, VLM mean token probability) sits near 1
CONFIDENCE_BUCKETS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 1.0)
MAX_DOC_TYPES = 32  # distinct doc_type label values per process; later ones are counted as "other"

METRIC_NAMES = (
    "deepsynth_info",
    "deepsynth_request_duration_seconds",
    "deepsynth_requests_total",
    "deepsynth_requests_in_flight",
    "deepsynth_stage_duration_seconds",
    "deepsynth_batch_size",
    "deepsynth_queue_depth",
    "deepsynth_errors_total",
    "deepsynth_pages_processed_total",
    "deepsynth_lines_processed_total",
    "deepsynth_tokens_processed_total",
    "deepsynth_repetitions_total",
    "deepsynth_truncations_total",
    "deepsynth_outputs_total",
    "deepsynth_empty_outputs_total",
    "deepsynth_output_confidence",
    "deepsynth_samples_stored_total",
    "deepsynth_samples_deleted_total",
    "deepsynth_feedback_stored_total",
)


GpuReading = tuple[str, str, float]  # (device, kind, bytes)


def local_gpu_memory() -> list[GpuReading]:
    """CUDA memory of this process per device (allocated, reserved, max_allocated); [] without torch+CUDA.

    It never imports torch itself (that costs seconds): an engine that runs on CUDA has already imported it.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        out.append((str(i), "allocated", float(torch.cuda.memory_allocated(i))))
        out.append((str(i), "reserved", float(torch.cuda.memory_reserved(i))))
        out.append((str(i), "max_allocated", float(torch.cuda.max_memory_allocated(i))))
    return out


class GpuMemoryCollector:
    """``deepsynth_gpu_memory_bytes{device,kind}`` read at scrape time from ``source`` (this process by
    default; the model process's last report when the model runs in its own process)."""

    def __init__(self, source: Callable[[], list[GpuReading]] = local_gpu_memory) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readings = self.source()
        if not readings:
            return
        fam = GaugeMetricFamily(
            "deepsynth_gpu_memory_bytes", "CUDA memory held by the model.", labels=["device", "kind"]
        )
        for device, kind, value in readings:
            fam.add_metric([device, kind], value)
        yield fam

    def describe(self) -> list:
        return []


class ServiceMetrics:
    """All serving metrics of one model; label children for the model are bound once to keep updates cheap."""

    def __init__(self, model_id: str, registry: CollectorRegistry | None = None, version: str = "") -> None:
        self.model_id = model_id
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        info = Gauge(
            "deepsynth_info", "Model served by this process (value 1).", ["model", "version"], registry=r
        )
        info.labels(model_id, version).set(1)
        self.request_duration = Histogram(
            "deepsynth_request_duration_seconds",
            "Time from request start to response, by route and model.",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "deepsynth_requests",
            "Finished requests by route, model and status.",
            ["route", "model", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "deepsynth_requests_in_flight", "Requests being handled now.", ["route", "model"], registry=r
        )
        self.stage_duration = Histogram(
            "deepsynth_stage_duration_seconds",
            "Time per request stage (preprocess, queue, model, postprocess).",
            ["stage", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "deepsynth_batch_size", "Images per model batch.", ["model"], buckets=BATCH_BUCKETS, registry=r
        ).labels(model_id)
        self.queue_depth = Gauge(
            "deepsynth_queue_depth", "Items waiting in the batching queue.", ["model"], registry=r
        ).labels(model_id)
        self.errors = Counter("deepsynth_errors", "Errors by type.", ["type", "model"], registry=r)
        self.pages = Counter("deepsynth_pages_processed", "Pages read.", ["model"], registry=r).labels(
            model_id
        )
        self.lines = Counter("deepsynth_lines_processed", "Text lines read.", ["model"], registry=r).labels(
            model_id
        )
        self.tokens = Counter(
            "deepsynth_tokens_processed", "Output tokens generated.", ["model"], registry=r
        ).labels(model_id)
        # quality signals per model and doc type (a label the client may send), for drift alerts without labels
        self.repetitions = Counter(
            "deepsynth_repetitions",
            "Outputs flagged as degenerate repetition.",
            ["model", "doc_type"],
            registry=r,
        )
        self.truncations = Counter(
            "deepsynth_truncations", "Outputs cut at the length limit (no end token).", ["model", "doc_type"],
            registry=r,
        )  # fmt: skip
        self.outputs = Counter(
            "deepsynth_outputs", "Outputs (pages) returned.", ["model", "doc_type"], registry=r
        )
        self.empty_outputs = Counter(
            "deepsynth_empty_outputs", "Outputs with no text.", ["model", "doc_type"], registry=r
        )
        self.confidence = Histogram(
            "deepsynth_output_confidence", "Mean confidence of each output (engines that report one).",
            ["model", "doc_type"], buckets=CONFIDENCE_BUCKETS, registry=r,
        )  # fmt: skip
        self._doc_types: set[str] = set()
        self.samples_stored = Counter(
            "deepsynth_samples_stored", "Requests persisted by the sample store.", ["model"], registry=r
        ).labels(model_id)
        self.samples_deleted = Counter(
            "deepsynth_samples_deleted", "Stored samples deleted by retention.", ["reason"], registry=r
        )
        self.feedback_stored = Counter(
            "deepsynth_feedback_stored", "Corrections stored by POST /v1/feedback (model: the corrected one).",
            ["model", "doc_type"], registry=r,
        )  # fmt: skip
        self._route_children: dict[str, tuple] = {}
        self._stage_children: dict[str, Histogram] = {}
        self._error_children: dict[str, Counter] = {}
        if registry is None:  # process_* metrics only on our own registry (they are per process)
            ProcessCollector(registry=r)
        self.gpu_memory = GpuMemoryCollector()
        r.register(self.gpu_memory)

    def watch_model_process(
        self, pid: Callable[[], int | None], gpu_memory: Callable[[], list[GpuReading]]
    ) -> None:
        """Export the model process's ``process_*`` metrics (prefixed ``deepsynth_model_``) and GPU memory."""
        self.gpu_memory.source = gpu_memory
        # a pid that is gone (or None) just yields no samples: prometheus_client skips unreadable /proc entries
        ProcessCollector(namespace="deepsynth_model", pid=lambda: pid() or "none", registry=self.registry)

    def route(self, route: str) -> tuple:
        """(duration histogram, in-flight gauge) children for a route, cached."""
        child = self._route_children.get(route)
        if child is None:
            child = (
                self.request_duration.labels(route, self.model_id),
                self.in_flight.labels(route, self.model_id),
            )
            self._route_children[route] = child
        return child

    def stage(self, name: str) -> Histogram:
        child = self._stage_children.get(name)
        if child is None:
            child = self._stage_children[name] = self.stage_duration.labels(name, self.model_id)
        return child

    def error(self, kind: str) -> Counter:
        child = self._error_children.get(kind)
        if child is None:
            child = self._error_children[kind] = self.errors.labels(kind, self.model_id)
        return child

    def doc_type(self, value: str | None) -> str:
        """The label value for a doc type: ``unknown`` when not given, ``other`` past MAX_DOC_TYPES values."""
        value = value or "unknown"
        if value not in self._doc_types:
            if len(self._doc_types) >= MAX_DOC_TYPES:
                return "other"
            self._doc_types.add(value)
        return value

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE


def merged_exposition(models: dict[str, CollectorRegistry]) -> tuple[bytes, str]:
    """One ``/metrics`` body for several models' registries (a server serving several models).

    Families of the same name are merged into one; every ``deepsynth_*`` sample carries the ``model`` label
    (added to the per-process families such as ``deepsynth_model_process_*``, which have none of their own);
    the server's own ``process_*`` / ``python_*`` samples, the same in every registry, appear once.
    """
    from prometheus_client import Metric

    families: dict[str, Metric] = {}
    seen: set[tuple] = set()
    for model, registry in models.items():
        for fam in registry.collect():
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for sample in fam.samples:
                if fam.name.startswith("deepsynth_") and "model" not in sample.labels:
                    sample = sample._replace(labels={**sample.labels, "model": model})
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in seen:
                    seen.add(key)
                    merged.samples.append(sample)

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            return iter(families.values())

    return generate_latest(_Merged()), CONTENT_TYPE  # type: ignore[arg-type]
