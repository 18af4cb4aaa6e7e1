"""Observability end to end: a real uvicorn server on loopback serving RapidOCR (PP-OCRv6) on real lines.

/metrics after real requests, the span tree of each request (in-memory exporter), JSON logs, and the sample
store writing redacted records, both in-process and through the real ``deepsynth serve`` command.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont
from prometheus_client.parser import text_string_to_metric_families

from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.service import OCRService
from deepsynth.observability import Observability
from deepsynth.observability.samples import SampleSettings, SampleStore
from tests.serving_engines import fondue_lines, running_server

STAGES = ["preprocess", "queue", "model", "postprocess"]
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
PERSONAL_LINE = "Contact jane.doe@example.com or +33 6 12 34 56 78"


@pytest.fixture(scope="module")
def engine():
    from deepsynth.models.registry import load_engine

    return load_engine("rapidocr")


@pytest.fixture(scope="module")
def lines(shared_data):
    return fondue_lines(shared_data, 6)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _rendered(text: str) -> Image.Image:
    if not FONT.is_file():
        pytest.skip("DejaVu font missing (apt-get install fonts-dejavu-core)")
    font = ImageFont.truetype(str(FONT), 32)
    img = Image.new("RGB", (int(font.getlength(text)) + 40, 56), "white")
    ImageDraw.Draw(img).text((20, 10), text, font=font, fill="black")
    return img


async def _post_all(
    url: str, images: list[Image.Image], headers: list[dict] | None = None
) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*[
            client.post("/v1/ocr", files={"file": (f"l{i}.png", _png(img), "image/png")},
                        headers=(headers or [{}] * len(images))[i])
            for i, img in enumerate(images)
        ])  # fmt: skip


def _samples(body: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def _app(engine, obs: Observability):
    service = OCRService(engine, model_id="rapidocr", obs=obs, max_batch_size=4, max_wait_ms=50)
    return create_app(service, ServerSettings(warmup=False))


def test_metrics_after_real_requests(engine, lines):
    obs = Observability("rapidocr")
    with running_server(_app(engine, obs)) as server:
        responses = asyncio.run(_post_all(server.url, [img for img, _ in lines]))
        bad = httpx.post(
            f"{server.url}/v1/ocr", content=b"not an image", headers={"content-type": "text/plain"}
        )
        body = httpx.get(f"{server.url}/metrics").text
    assert [r.status_code for r in responses] == [200] * len(lines) and bad.status_code == 415
    texts = [r.json()["text"] for r in responses]
    from rapidfuzz.distance import Levenshtein

    errors = [Levenshtein.normalized_distance(t, ref) for t, (_, ref) in zip(texts, lines, strict=True)]
    assert sum(errors) / len(errors) < 0.1, texts  # the real model did read them
    s = _samples(body)
    m, route = ("model", "rapidocr"), ("route", "/v1/ocr")
    assert s[("deepsynth_request_duration_seconds_count", (m, route))] == len(lines) + 1
    assert s[("deepsynth_requests_total", (m, route, ("status", "ok")))] == len(lines)
    assert s[("deepsynth_requests_total", (m, route, ("status", "415")))] == 1
    assert s[("deepsynth_errors_total", (m, ("type", "unsupported_media_type")))] == 1
    assert s[("deepsynth_batch_size_sum", (m,))] == len(lines)  # every image went through a batch
    assert 1 <= s[("deepsynth_batch_size_count", (m,))] < len(lines)  # concurrent requests were batched
    assert s[("deepsynth_pages_processed_total", (m,))] == len(lines)
    for stage in STAGES:  # the rejected upload failed inside preprocess: it is timed there and nowhere else
        expected = len(lines) + (stage == "preprocess")
        assert s[("deepsynth_stage_duration_seconds_count", (m, ("stage", stage)))] == expected, stage
    model_time = s[("deepsynth_stage_duration_seconds_sum", (m, ("stage", "model")))]
    total = s[("deepsynth_request_duration_seconds_sum", (m, route))]
    assert 0 < model_time < total
    promtool = shutil.which("promtool")
    if promtool:
        res = subprocess.run(
            [promtool, "check", "metrics"], input=body.encode(), capture_output=True, timeout=60
        )
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_span_tree_per_request(engine, lines):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    obs = Observability("rapidocr", tracer_provider=provider)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    headers = [{"x-request-id": f"trace-{i}"} for i in range(3)]
    headers[0]["traceparent"] = f"00-{trace_id}-b7ad6b7169203331-01"
    with running_server(_app(engine, obs)) as server:
        responses = asyncio.run(_post_all(server.url, [img for img, _ in lines[:3]], headers))
    assert [r.headers["x-request-id"] for r in responses] == ["trace-0", "trace-1", "trace-2"]
    spans = exporter.get_finished_spans()
    roots = {s.attributes["deepsynth.request_id"]: s for s in spans if s.name == "request"}
    assert set(roots) == {"trace-0", "trace-1", "trace-2"}
    for rid, root in roots.items():
        children = sorted(
            (s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
            key=lambda s: s.start_time,
        )
        assert [c.name for c in children] == STAGES, rid
        assert all(c.context.trace_id == root.context.trace_id for c in children)
        assert all(root.start_time <= c.start_time and c.end_time <= root.end_time for c in children)
        assert root.attributes["deepsynth.route"] == "/v1/ocr" and root.attributes["deepsynth.status"] == "ok"
    assert format(roots["trace-0"].context.trace_id, "032x") == trace_id  # joined the caller's trace
    assert roots["trace-0"].parent is not None and roots["trace-1"].parent is None


def test_sampled_request_stores_a_redacted_record(engine, tmp_path):
    store = SampleStore(SampleSettings(directory=tmp_path / "samples", rate=1.0, image_mode="blur"))
    obs = Observability("rapidocr", sample_store=store)
    with running_server(_app(engine, obs)) as server:
        (resp,) = asyncio.run(
            _post_all(server.url, [_rendered(PERSONAL_LINE)], [{"x-request-id": "audit-1"}])
        )
    store.flush()
    assert resp.status_code == 200 and "jane.doe@example.com" in resp.json()["text"]  # the client gets it all
    (rec,) = store.list_samples()
    assert rec["request_id"] == "audit-1" and rec["model_id"] == "rapidocr"
    assert rec["text"] == "Contact [EMAIL] or [PHONE]" and rec["redactions"] == {"email": 1, "phone": 1}
    assert set(rec["timings_ms"]) >= {"preprocess", "queue", "model"}
    assert Image.open(store.root / rec["image"]).size[0] == 256
    audit = [json.loads(x) for x in store.audit_path.read_text().splitlines()]
    assert [a["action"] for a in audit] == ["open", "store"] and "jane" not in store.audit_path.read_text()


@pytest.mark.slow
def test_deepsynth_serve_command_with_env_configuration(tmp_path, shared_data):
    """The real `deepsynth serve` process: env-configured samples, JSON logs with request ids, /metrics."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    samples = tmp_path / "samples"
    env = {
        **os.environ,
        "DEEPSYNTH_SAMPLES_DIR": str(samples),
        "DEEPSYNTH_SAMPLES_RATE": "1",
        "DEEPSYNTH_SAMPLES_IMAGE": "omit",
        "DEEPSYNTH_LOG_FORMAT": "json",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    cmd = [sys.executable, "-m", "deepsynth.cli.main", "serve", "--model", "rapidocr", "--port", str(port)]
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "deepsynth serve did not become ready"
                time.sleep(0.2)
            (resp,) = asyncio.run(_post_all(url, [_rendered(PERSONAL_LINE)], [{"x-request-id": "cli-1"}]))
            metrics = httpx.get(f"{url}/metrics").text
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    assert resp.status_code == 200
    assert (
        _samples(metrics)[
            ("deepsynth_request_duration_seconds_count", (("model", "rapidocr"), ("route", "/v1/ocr")))
        ]
        == 1
    )
    (rec_file,) = (samples / "records").glob("*.json")
    rec = json.loads(rec_file.read_text())
    assert (
        rec["text"] == "Contact [EMAIL] or [PHONE]" and rec["image"] is None and rec["request_id"] == "cli-1"
    )
    logs = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    done = [x for x in logs if x.get("msg") == "request finished" and x.get("request_id") == "cli-1"]
    assert len(done) == 1 and set(done[0]["stages_ms"]) == set(STAGES) and done[0]["status"] == "ok"
    assert "jane.doe" not in log_path.read_text()  # OCR text never reaches the logs
