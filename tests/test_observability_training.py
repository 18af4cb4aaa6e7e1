"""The ``prometheus`` training tracker: textfile (promtool-valid), live /metrics endpoint, Pushgateway push."""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deepsynth.observability.training_metrics import PrometheusTracker

TRAIN_STEP = {
    "train/loss": 0.75,
    "train/lr": 2e-4,
    "train/epoch": 0.5,
    "train/step_seconds": 0.42,
    "train/samples_per_second": 19.0,
}
EVAL = {"eval/cer": 0.031, "eval/wer": 0.12, "eval/best_cer": 0.031, "eval/n": 40.0}


def _values(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_tracker_writes_valid_textfile(tmp_path):
    run = tmp_path / "my-run"
    tr = PrometheusTracker(run, env={})
    tr.log_config({"model": {"family": "ppocr"}, "optim": {"lr": 2e-4}})
    tr.log_metrics(TRAIN_STEP, step=10)
    tr.log_metrics(EVAL, step=10)
    tr.log_metrics({"train/loss": 0.5, "train/weird": float("nan"), "train/note": "x"}, step=20)  # type: ignore[dict-item]
    tr.log_text("eval/examples", "some text", 20)
    tr.close()
    text = (run / "metrics.prom").read_text()
    v = _values(text)
    assert v[("deepsynth_training_step", (("run", "my-run"),))] == 20
    assert v[("deepsynth_training_loss", (("run", "my-run"), ("split", "train")))] == 0.5
    assert v[("deepsynth_training_learning_rate", (("run", "my-run"), ("split", "train")))] == 2e-4
    assert v[("deepsynth_training_step_duration_seconds", (("run", "my-run"), ("split", "train")))] == 0.42
    assert v[("deepsynth_training_cer", (("run", "my-run"), ("split", "eval")))] == 0.031
    assert v[("deepsynth_training_wer", (("run", "my-run"), ("split", "eval")))] == 0.12
    assert (
        v[("deepsynth_training_metric", (("name", "best_cer"), ("run", "my-run"), ("split", "eval")))]
        == 0.031
    )
    assert v[("deepsynth_training_info", (("family", "ppocr"), ("run", "my-run")))] == 1
    assert "weird" not in text and "note" not in text and "some text" not in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    res = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_live_metrics_endpoint_while_training(tmp_path):
    tr = PrometheusTracker(tmp_path / "run", env={"DEEPSYNTH_TRAIN_METRICS_PORT": "0"})
    try:
        tr.log_metrics(TRAIN_STEP, step=3)
        with urllib.request.urlopen(f"http://127.0.0.1:{tr.port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert _values(body)[("deepsynth_training_step", (("run", "run"),))] == 3
    finally:
        tr.close()
    with pytest.raises(ValueError, match="DEEPSYNTH_TRAIN_METRICS_PORT"):
        PrometheusTracker(tmp_path / "run2", env={"DEEPSYNTH_TRAIN_METRICS_PORT": "ninety"})


class _Gateway(BaseHTTPRequestHandler):
    pushes: list[tuple[str, str, bytes]] = []

    def do_PUT(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).pushes.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_push_to_pushgateway(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Gateway)
    _Gateway.pushes = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        tr = PrometheusTracker(tmp_path / "run-a", env={"DEEPSYNTH_PUSHGATEWAY_URL": url})
        tr.log_metrics(TRAIN_STEP, step=7)
        tr.close()
    finally:
        server.shutdown()
    assert len(_Gateway.pushes) == 2  # one per log_metrics, one at close
    method, path, body = _Gateway.pushes[0]
    assert method == "PUT" and path == "/metrics/job/deepsynth-train/run/run-a"
    assert _values(body.decode())[("deepsynth_training_loss", (("run", "run-a"), ("split", "train")))] == 0.75


def test_build_trackers_resolves_prometheus(tmp_path):
    trackers = pytest.importorskip("deepsynth.training.trackers")
    fan = trackers.build_trackers(["prometheus"], tmp_path / "r")
    fan.log_metrics({"train/loss": 1.25}, step=1)
    fan.close()
    assert any(isinstance(t, PrometheusTracker) for t in fan.trackers)
    assert "deepsynth_training_loss" in (tmp_path / "r" / "metrics.prom").read_text()
