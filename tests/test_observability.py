"""Observability unit tests: Prometheus exposition (checked by promtool), span tree, JSON logs, OTLP export."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deepsynth.observability import Observability
from deepsynth.observability.logging import configure_logging
from deepsynth.observability.metrics import METRIC_NAMES
from deepsynth.observability.tracing import Tracing, tracing_requested

STAGES = ["preprocess", "queue", "model", "postprocess"]


def _samples(body: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _memory_tracing():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _serve_one(obs: Observability, route: str = "/v1/ocr", request_id: str | None = None) -> str:
    with obs.request(route, request_id) as ctx:
        for name in STAGES:
            with obs.stage(name, batch=1):
                pass
        obs.record_batch(3, queue_depth=5)
        obs.record_result(pages=1, lines=4, tokens=17, repetition=True, truncated=True, confidence=0.97)
    return ctx.request_id


def test_exposition_has_every_metric_and_passes_promtool(tmp_path):
    obs = Observability("tiny-model")
    _serve_one(obs)
    _serve_one(obs, route="/v1/chat/completions")
    obs.record_error("bad_image")
    body, content_type = obs.exposition()
    assert content_type.startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    for name in METRIC_NAMES:  # counters are listed without their _total suffix by the parser
        assert name.removesuffix("_total") in families, name
    s = _samples(body)
    assert (
        s[("deepsynth_request_duration_seconds_count", (("model", "tiny-model"), ("route", "/v1/ocr")))] == 1
    )
    assert s[("deepsynth_batch_size_count", (("model", "tiny-model"),))] == 2
    assert s[("deepsynth_batch_size_sum", (("model", "tiny-model"),))] == 6
    assert s[("deepsynth_queue_depth", (("model", "tiny-model"),))] == 5
    assert s[("deepsynth_lines_processed_total", (("model", "tiny-model"),))] == 8
    assert s[("deepsynth_tokens_processed_total", (("model", "tiny-model"),))] == 34
    unknown = (("doc_type", "unknown"), ("model", "tiny-model"))
    assert s[("deepsynth_truncations_total", unknown)] == s[("deepsynth_outputs_total", unknown)] == 2
    assert s[("deepsynth_output_confidence_sum", unknown)] == pytest.approx(1.94)
    assert s[("deepsynth_errors_total", (("model", "tiny-model"), ("type", "bad_image")))] == 1
    assert s[("deepsynth_stage_duration_seconds_count", (("model", "tiny-model"), ("stage", "model")))] == 2
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_private_registries_do_not_collide():
    a, b = Observability("a"), Observability("b")
    _serve_one(a)
    sb = _samples(b.exposition()[0])
    assert not any(k[0] == "deepsynth_request_duration_seconds_count" for k in sb)


def test_error_inside_request_counts_and_sets_status():
    provider, exporter = _memory_tracing()
    obs = Observability("m", tracer_provider=provider)
    with pytest.raises(ValueError), obs.request("/v1/ocr"):
        raise ValueError("broken image")
    s = _samples(obs.exposition()[0])
    assert s[("deepsynth_errors_total", (("model", "m"), ("type", "ValueError")))] == 1
    assert s[("deepsynth_requests_total", (("model", "m"), ("route", "/v1/ocr"), ("status", "error")))] == 1
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    # arbitrary error kinds are reduced to safe label values
    obs.record_error('weird "kind"\n')
    assert 'type="weird__kind__"' in obs.exposition()[0].decode()


def test_span_tree_per_request():
    provider, exporter = _memory_tracing()
    obs = Observability("tiny-model", tracer_provider=provider)
    rid1 = _serve_one(obs, request_id="req-1")
    with obs.request("/v1/ocr", "req-2"):
        with obs.stage("preprocess"):
            pass
        obs.record_stage("queue", 0.25)  # measured by the batcher, recorded afterwards
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "request"]
    assert [r.attributes["deepsynth.request_id"] for r in roots] == [rid1, "req-2"]
    for root in roots:
        assert root.parent is None
        assert root.attributes["deepsynth.model"] == "tiny-model"
        assert root.attributes["deepsynth.status"] == "ok"
    children = {
        r.attributes["deepsynth.request_id"]: [
            s.name for s in spans if s.parent is not None and s.parent.span_id == r.context.span_id
        ]
        for r in roots
    }
    assert children == {"req-1": STAGES, "req-2": ["preprocess", "queue"]}
    queue = next(s for s in spans if s.name == "queue" and s.context.trace_id == roots[1].context.trace_id)
    assert (queue.end_time - queue.start_time) == pytest.approx(0.25e9, rel=1e-3)
    assert roots[0].context.trace_id != roots[1].context.trace_id


def test_traceparent_header_joins_callers_trace():
    provider, exporter = _memory_tracing()
    obs = Observability("m", tracer_provider=provider)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with obs.request("/v1/ocr", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}):
        pass
    (root,) = exporter.get_finished_spans()
    assert format(root.context.trace_id, "032x") == trace_id
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"


def test_tracing_off_by_default_and_env_switches():
    assert not tracing_requested({})
    assert not tracing_requested({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_requested(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}
    )
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing_requested({"DEEPSYNTH_TRACING": "1"})
    off = Tracing(None)
    assert off.span("x") is off.span("y")  # one shared no-op object: nothing allocated per call
    obs = Observability.from_env(model_id="m", env={})
    assert not obs.tracing.enabled and not obs.samples.enabled and obs.metrics is not None
    assert Observability.from_env(model_id="m", env={"DEEPSYNTH_METRICS": "0"}).exposition()[0] == b""


def test_json_logs_carry_request_id_and_stage_durations():
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    try:
        obs = Observability("m")
        other = logging.getLogger("deepsynth.inference.test")

        async def one(rid: str) -> None:
            with obs.request("/v1/ocr", rid):
                with obs.stage("preprocess"):
                    await asyncio.sleep(0.01)
                other.info("inside", extra={"n_images": 1})
                with obs.stage("model"):
                    await asyncio.sleep(0.02)

        async def both() -> None:  # interleaved requests keep their own ids
            await asyncio.gather(one("r-a"), one("r-b"))

        asyncio.run(both())
    finally:
        configure_logging("INFO", "json")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = {x["request_id"]: x for x in lines if x["msg"] == "request finished"}
    assert set(done) == {"r-a", "r-b"}
    for rec in done.values():
        assert rec["stages_ms"]["preprocess"] >= 9 and rec["stages_ms"]["model"] >= 19
        assert rec["duration_ms"] >= rec["stages_ms"]["preprocess"] + rec["stages_ms"]["model"]
        assert rec["status"] == "ok" and rec["level"] == "info"
    inside = [x for x in lines if x["msg"] == "inside"]
    assert sorted(x["request_id"] for x in inside) == ["r-a", "r-b"] and inside[0]["n_images"] == 1
    stages = [x for x in lines if x["msg"] == "stage finished"]
    assert {(x["request_id"], x["stage"]) for x in stages} == {
        (r, s) for r in ("r-a", "r-b") for s in ("preprocess", "model")
    }
    assert all(x["duration_ms"] > 0 for x in stages)


def test_unsafe_request_id_is_replaced():
    obs = Observability("m")
    with obs.request("/v1/ocr", "../../etc/passwd") as ctx:
        pass
    assert "/" not in ctx.request_id and len(ctx.request_id) == 32


class _OTLPReceiver(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_otlp_http_export_from_env():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    server = HTTPServer(("127.0.0.1", 0), _OTLPReceiver)
    _OTLPReceiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            "OTEL_SERVICE_NAME": "deepsynth-test",
        }
        obs = Observability.from_env(model_id="m", env=env)
        assert obs.tracing.enabled
        _serve_one(obs, request_id="otlp-1")
        obs.close()
        assert not obs.tracing.enabled  # the provider we built was shut down (exporter thread stopped)
        _serve_one(obs)  # and requests after shutdown still work (untraced)
    finally:
        server.shutdown()
    assert _OTLPReceiver.received, "no OTLP request arrived"
    path, body = _OTLPReceiver.received[0]
    assert path == "/v1/traces"
    req = ExportTraceServiceRequest.FromString(body)
    rs = req.resource_spans[0]
    service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
    names = sorted(s.name for ss in rs.scope_spans for s in ss.spans)
    assert service == "deepsynth-test"
    assert names == sorted([*STAGES, "request"])


def test_from_env_keeps_other_loggers_visible_to_caplog(caplog):
    """Building a service's Observability must not hide deepsynth.* records from the root logger (caplog)."""
    Observability.from_env(model_id="m", env={})
    with caplog.at_level(logging.WARNING):
        logging.getLogger("deepsynth.training.trainer").warning("non-finite loss, batch skipped")
    assert any("non-finite loss" in r.message for r in caplog.records)


def test_cancelled_request_is_counted_as_cancelled_not_as_failure():
    obs = Observability("m")

    async def handler() -> None:
        with obs.request("/v1/ocr"):
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(handler())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    s = _samples(obs.exposition()[0])
    assert (
        s[("deepsynth_requests_total", (("model", "m"), ("route", "/v1/ocr"), ("status", "cancelled")))] == 1
    )
    assert s[("deepsynth_errors_total", (("model", "m"), ("type", "cancelled")))] == 1
    assert s[("deepsynth_requests_in_flight", (("model", "m"), ("route", "/v1/ocr")))] == 0


def test_gpu_memory_comes_from_the_engine_that_holds_the_model():
    """With the model in its own process, the server process holds no CUDA memory: the service points the
    gauge at the engine's own report (ProcessEngine.gpu_memory)."""
    from deepsynth.inference.engine import InProcessEngine
    from deepsynth.inference.service import OCRService
    from tests.serving_engines import ColourEngine

    class ReportingEngine(InProcessEngine):
        """Stands in for a model in another process (here: this one) that reports its CUDA memory."""

        def __init__(self) -> None:
            super().__init__(ColourEngine())
            self.readings = [("0", "allocated", 1.5e9), ("0", "reserved", 2.0e9)]

        @property
        def pid(self) -> int:
            return os.getpid()

        def gpu_memory(self):
            return self.readings

    engine = ReportingEngine()
    obs = Observability("colour")

    def gauge() -> dict:
        text = obs.exposition()[0].decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        fam = fams.get("deepsynth_gpu_memory_bytes")
        return {} if fam is None else {s.labels["kind"]: s.value for s in fam.samples}

    assert gauge() == {}  # no torch+CUDA in this process
    OCRService(engine, obs=obs)
    assert gauge() == {"allocated": 1.5e9, "reserved": 2.0e9}
    engine.readings = [("0", "allocated", 3.0e9)]  # read at scrape time
    assert gauge() == {"allocated": 3.0e9}


def test_quality_signals_per_doc_type_with_bounded_label_values():
    obs = Observability("m")
    obs.record_result(pages=1, empty=True, confidence=0.5, doc_type="invoice")
    obs.record_result(pages=1, confidence=float("nan"), doc_type="invoice")  # not observed
    obs.record_result(pages=1, repetition=True, doc_type='letter"}\nx')  # sanitised, cannot break the format
    for i in range(40):
        obs.record_result(pages=1, doc_type=f"t{i}")
    s = _samples(obs.exposition()[0])
    invoice = (("doc_type", "invoice"), ("model", "m"))
    assert s[("deepsynth_outputs_total", invoice)] == 2 and s[("deepsynth_empty_outputs_total", invoice)] == 1
    assert s[("deepsynth_output_confidence_count", invoice)] == 1
    assert s[("deepsynth_repetitions_total", (("doc_type", "letter___x"), ("model", "m")))] == 1
    doc_types = {dict(k[1])["doc_type"] for k in s if k[0] == "deepsynth_outputs_total"}
    assert len(doc_types) == 32 + 1 and "other" in doc_types  # MAX_DOC_TYPES, then "other"
