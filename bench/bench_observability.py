"""Serving throughput with observability off vs on, measured in one run (goal: <= 3% difference).

Two real uvicorn servers on loopback share one RapidOCR (PP-OCRv6) engine and read real printed lines from
../shared/data/fondue_en_print20:

* ``off``: no metrics, no tracing, request logs below the log level (what ``DEEPSYNTH_METRICS=0`` gives);
* ``on``: Prometheus metrics + OpenTelemetry spans for every stage (SDK, in-memory exporter) + one JSON log
  line per request (written to /dev/null).

Rounds alternate off/on (ABAB...) so machine noise hits both alike. The declared statistic is the median of
the per-round throughput ratios (on / off) with its distribution-free CI (bench/stats.py); the goal (>= 0.97,
i.e. <= 3% overhead) is judged only when the CI is on one side of it. A direct micro-measurement of the
per-request cost of the Observability calls (no HTTP, no model) is reported as well; it is a bound from CPU
time, not the goal's statistic.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
import statistics
import threading
import time
from pathlib import Path

from bench.stats import paired_ratio

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "fondue_en_print20"
ROUNDS = int(os.environ.get("BENCH_OBS_ROUNDS", "8"))
# 64 per round: with 16 (two batches of 8) a small shift in request timing changes how batches form, which
# biased the ratio by ~5% either way; 64 averages the batch boundaries out
REQUESTS_PER_ROUND = int(os.environ.get("BENCH_OBS_REQUESTS", "64"))
CONCURRENCY = 8


def _lines(n: int) -> list[bytes]:
    from PIL import Image

    out = []
    for line in (DATA / "manifest.jsonl").open():
        rec = json.loads(line)
        if rec["level"] == "line" and len(rec["text"]) > 20:
            buf = io.BytesIO()
            Image.open(DATA / rec["image"]).convert("RGB").save(buf, format="PNG")
            out.append(buf.getvalue())
            if len(out) == n:
                break
    return out


@contextlib.contextmanager
def _server(app):
    import httpx
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not server.started or httpx.get(f"{url}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


async def _round(url: str, images: list[bytes]) -> float:
    """Requests per second for REQUESTS_PER_ROUND requests at CONCURRENCY."""
    import httpx

    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int) -> None:
            async with sem:
                r = await client.post(
                    "/v1/ocr", files={"file": ("l.png", images[i % len(images)], "image/png")}
                )
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(REQUESTS_PER_ROUND)])
        return REQUESTS_PER_ROUND / (time.perf_counter() - t0)


def _micro(obs, n: int = 2000) -> float:
    """Microseconds per request spent in the Observability calls a request makes (no HTTP, no model)."""
    t0 = time.perf_counter()
    for _ in range(n):
        with obs.request("/v1/ocr"):
            for stage in ("preprocess", "queue", "model", "postprocess"):
                with obs.stage(stage):
                    pass
            obs.record_batch(4, 2)
            obs.record_result(pages=1, lines=1, tokens=0)
            obs.maybe_store_sample("x", None, "", {}, "m")
    return (time.perf_counter() - t0) / n * 1e6


def main() -> dict:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from deepsynth.inference.api import ServerSettings, create_app
    from deepsynth.inference.service import OCRService
    from deepsynth.models.registry import load_engine
    from deepsynth.observability import Observability
    from deepsynth.observability.logging import configure_logging

    images = _lines(REQUESTS_PER_ROUND)
    engine = load_engine("rapidocr")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    devnull = open(os.devnull, "w")  # noqa: SIM115 (closed at the end)
    request_log = configure_logging("INFO", "json", stream=devnull)
    obs = {
        "off": Observability("rapidocr", metrics=False),
        "on": Observability("rapidocr", tracer_provider=provider),
    }
    levels = {"off": logging.WARNING, "on": logging.INFO}

    def app(name: str):
        service = OCRService(engine, model_id="rapidocr", obs=obs[name], max_batch_size=8, max_wait_ms=5)
        return create_app(service, ServerSettings(warmup=True))

    rates: dict[str, list[float]] = {"off": [], "on": []}
    spans = 0
    with _server(app("off")) as url_off, _server(app("on")) as url_on:
        urls = {"off": url_off, "on": url_on}
        for name in ("off", "on"):  # warm both (first-call costs)
            request_log.setLevel(levels[name])
            asyncio.run(_round(urls[name], images))
        exporter.clear()
        for r in range(ROUNDS):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for name in order:
                request_log.setLevel(levels[name])
                rates[name].append(asyncio.run(_round(urls[name], images)))
            spans += len(exporter.get_finished_spans())
            exporter.clear()
    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    request_log.setLevel(logging.WARNING)
    micro_off = _micro(obs["off"])
    request_log.setLevel(logging.INFO)
    micro_on = _micro(obs["on"])
    exporter.clear()
    devnull.close()
    configure_logging("INFO", "json")
    # Noise-free bound: the extra CPU time of the "on" calls relative to the server time of one request.
    server_us_per_request = 1e6 / statistics.median(rates["off"])
    return {
        "engine": "rapidocr (PP-OCRv6 small, line mode)",
        "data": "fondue_en_print20 line crops",
        "rounds": ROUNDS,
        "requests_per_round": REQUESTS_PER_ROUND,
        "concurrency": CONCURRENCY,
        "throughput_off_rps_median": round(statistics.median(rates["off"]), 2),
        "throughput_on_rps_median": round(statistics.median(rates["on"]), 2),
        "per_round_ratio_on_over_off": [round(x, 4) for x in ratios],
        "throughput_on_over_off": paired_ratio(ratios, goal=0.97, higher_is_better=True),
        "spans_exported": spans,
        "spans_per_request": round(spans / (ROUNDS * REQUESTS_PER_ROUND), 2),
        "obs_calls_us_per_request_off": round(micro_off, 1),
        "obs_calls_us_per_request_on": round(micro_on, 1),
        "call_cost_share_of_request_pct": round(100 * (micro_on - micro_off) / server_us_per_request, 3),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
