"""Serving checks: ``deepsynth serve`` started as users start it, one real request, the GPU memory gauge read
from ``/metrics``; and the embedded PP-OCR recogniser trained and then served the same way."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deepsynth.doctor.finetune import SHORT_RUN, describe
from deepsynth.doctor.fixtures import StepTimer, checkpoint, line_samples, recipe
from deepsynth.doctor.runner import CheckContext

GAUGE = "deepsynth_gpu_memory_bytes"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    args: list[str], log_path: Path, timeout_s: float = 180
) -> tuple[subprocess.Popen[bytes], str]:
    """``deepsynth serve ARGS`` on a free port, output to ``log_path``; returns once ``/readyz`` answers 200."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "deepsynth.cli.main", "serve", *args, "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError("deepsynth serve exited before it was ready:\n" + "\n".join(tail))
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"deepsynth serve not ready after {timeout_s:g} s")
        time.sleep(0.3)


def gpu_gauge(metrics_text: str) -> dict[str, float]:
    """``{"0/allocated": bytes, ...}`` from the Prometheus text of ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == GAUGE:
            for s in family.samples:
                out[f"{s.labels['device']}/{s.labels['kind']}"] = s.value
    return out


def serve_and_probe(ctx: CheckContext, spec: str) -> dict[str, Any]:
    """Serve ``spec``, OCR one rendered line over HTTP, read the GPU gauge; the server is stopped after."""
    import httpx

    buf = io.BytesIO()
    line_samples(1)[0].image.save(buf, "PNG")
    args = ["--model", spec, "--max-new-tokens", "8", "--max-batch-size", "2"]
    proc, url = start_server(args, Path(ctx.workdir) / "serve.log")
    try:
        t0 = time.perf_counter()
        r = httpx.post(
            f"{url}/v1/ocr", files={"file": ("line.png", buf.getvalue(), "image/png")}, timeout=120
        )
        latency = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"POST /v1/ocr answered {r.status_code}: {r.text[:300]}")
        gauge = gpu_gauge(httpx.get(f"{url}/metrics", timeout=30).text)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    allocated = sum(v for k, v in gauge.items() if k.endswith("/allocated"))
    if ctx.require_cuda and allocated <= 0:
        raise AssertionError(
            f"{GAUGE} is not above 0 after a request (model not on CUDA?): {gauge or 'absent'}"
        )
    peak = sum(v for k, v in gauge.items() if k.endswith("/max_allocated"))
    return {
        "summary": f"gauge {allocated / 1024**2:,.0f} MiB allocated" if gauge else "no GPU memory gauge",
        "spec": spec,
        "request_seconds": round(latency, 3),
        "gauge": gauge,
        "peak_gpu_bytes": peak or None,
    }


def serve_vlm(ctx: CheckContext) -> dict[str, Any]:
    """``deepsynth serve`` of a tiny DeepSeek-OCR-2 checkpoint: loaded on CUDA in its model process."""
    return serve_and_probe(ctx, f"deepseek_ocr2:{checkpoint('deepseek_ocr2')}")


def ppocr(ctx: CheckContext) -> dict[str, Any]:
    """The embedded PP-OCRv6 recogniser: 4 fine-tune steps on CUDA (configs/ppocr_finetune.yaml), then served
    on CUDA by ``deepsynth serve``."""
    from deepsynth.config import load_config
    from deepsynth.training.config import TrainConfig
    from deepsynth.training.trainer import Trainer

    run = [f"output_dir={Path(ctx.workdir) / 'run'}", "batch_size=4", "max_minutes=null", *SHORT_RUN]
    cfg = load_config(TrainConfig, recipe("ppocr_finetune.yaml"), run)
    samples, timer = line_samples(16), StepTimer()
    trainer = Trainer(cfg, train_samples=samples, eval_samples=samples[:4], callbacks=[timer])
    result = trainer.run()
    train = describe(trainer, result, timer)
    if ctx.require_cuda and not train["device"].startswith("cuda"):
        raise AssertionError(f"trained on {train['device']}, not CUDA")
    step_seconds = train.pop("step_seconds")
    served = serve_and_probe(ctx, f"ppocr:{result.final_dir}")
    return {"train": train, **served, "step_seconds": step_seconds}
