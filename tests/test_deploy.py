"""Deployment assets: Dockerfiles (hadolint), entrypoint (shellcheck + dispatch), Prometheus config and alert
rules (promtool), docker-compose wiring, and the Grafana dashboard against the real metrics exposition.

Docker itself cannot run on the build machines, so images are linted and cross-checked, not built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deepsynth.observability import Observability
from deepsynth.observability.metrics import local_gpu_memory
from deepsynth.observability.training_metrics import PrometheusTracker

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "deepsynth.json"
DOCKERFILES = [DEPLOY / "Dockerfile.cpu", DEPLOY / "Dockerfile.cuda"]
VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if path is None:
        pytest.skip(f"{name} not installed (pip install 'deepsynth[dev]' / apt-get install prometheus)")
    return path


def _run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
    return set(re.findall(r"\b((?:deepsynth|process)_[a-z0-9_]+)\b", expr))


def _full_exposition() -> str:
    """Exposition of a server that served requests + a training run, GPU gauge included via a stand-in torch."""
    obs = Observability("rapidocr")
    with obs.request("/v1/ocr"):
        for stage in ("preprocess", "queue", "model", "postprocess"):
            with obs.stage(stage):
                pass
        obs.record_batch(2, 1)
        obs.record_result(
            pages=1, lines=3, tokens=9, repetition=True, truncated=True, empty=True, confidence=0.9
        )
    obs.record_error("bad_image")
    obs._count_stored()
    obs._count_deleted("max_count")
    # the model in its own process (this test process stands in for it)
    obs.watch_model_process(os.getpid, local_gpu_memory)
    fake_cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 1,
        memory_allocated=lambda i: 1024,
        memory_reserved=lambda i: 2048,
        max_memory_allocated=lambda i: 4096,
    )
    saved = sys.modules.get("torch")
    sys.modules["torch"] = types.SimpleNamespace(cuda=fake_cuda)  # CUDA cannot run here
    try:
        body = obs.exposition()[0].decode()
    finally:
        if saved is None:
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = saved
    return body


def _loop_exposition(tmp: Path) -> str:
    """The improvement loop's metrics for a work directory with one type, a rejected run and a champion."""
    from deepsynth.data import Sample
    from deepsynth.loop.config import LoopConfig
    from deepsynth.loop.metrics import LoopMetrics
    from deepsynth.loop.runner import registry_for
    from deepsynth.loop.state import LoopState, save_state, write_json_atomic

    cfg = LoopConfig(name="shop", workdir=str(tmp / "work"), inbox=str(tmp / "inbox"))
    state = LoopState(runs=["r1"], last_pass_at=time.time())
    for i in range(3):
        state.add_sample(
            Sample(f"s{i}", "t", meta={"doc_type": "receipts", "page_id": "p1"}), "page_id", 0.15, 0
        )
    save_state(cfg.workdir, state)
    write_json_atomic(tmp / "work" / "runs" / "r1" / "record.json", {"run_id": "r1", "types": ["receipts"],
                      "stage": "done", "decision": "rejected"})  # fmt: skip
    (tmp / "model").mkdir()
    registry = registry_for(cfg)
    version = registry.register("shop-receipts", tmp / "model", run_id="r0", metrics={"holdout_cer.receipts": 0.05},
                                params={}, files={})  # fmt: skip
    registry.promote("shop-receipts", version)
    metrics = LoopMetrics(cfg, env={})
    metrics.update(2.0)
    metrics.close()
    return (tmp / "work" / "metrics.prom").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    res = _run(_tool("hadolint"), "--config", DEPLOY / ".hadolint.yaml", dockerfile)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_paths_and_uses_entrypoint(dockerfile):
    text = dockerfile.read_text()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"{dockerfile.name}: COPY source {part} missing"
    assert 'ENTRYPOINT ["tini", "--", "deepsynth-entrypoint"]' in text and "EXPOSE 8000" in text
    ignore = (DEPLOY / f"{dockerfile.name}.dockerignore").read_text()
    assert (
        "!src/**" in ignore and "!deploy/entrypoint.sh" in ignore
    )  # .venv and runs/ stay out of the context


def test_entrypoint_passes_shellcheck_and_dispatches(tmp_path):
    script = DEPLOY / "entrypoint.sh"
    res = _run(_tool("shellcheck"), script)
    assert res.returncode == 0, res.stdout
    assert os.access(script, os.X_OK)
    # The real CLI for a subcommand that needs no model:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    res = _run("sh", script, "version", env=env)
    assert res.returncode == 0 and res.stdout.strip() == "0.1.0", res.stderr
    # Argument assembly for serve (a recording stand-in for `deepsynth`: no model loading in a lint test).
    stub = tmp_path / "deepsynth"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "DEEPSYNTH_MODEL": "ppocr:runs/demo/best"}

    def argv(*args: str) -> list[str]:
        out = _run("sh", script, *args, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert argv() == ["serve", "--model", "ppocr:runs/demo/best", "--host", "0.0.0.0", "--port", "8000"]
    assert argv("serve", "-m", "rapidocr", "--port", "9000") == [
        "serve", "-m", "rapidocr", "--port", "9000", "--host", "0.0.0.0"
    ]  # fmt: skip
    assert argv("serve", "--max-batch-size", "8")[:5] == [
        "serve",
        "--model",
        "ppocr:runs/demo/best",
        "--max-batch-size",
        "8",
    ]
    assert argv("train", "configs/x.yaml", "epochs=1") == ["train", "configs/x.yaml", "epochs=1"]
    assert argv("ocr", "a.png", "--model", "rapidocr") == ["ocr", "a.png", "--model", "rapidocr"]
    assert argv("doctor", "--gpu") == ["doctor", "--gpu"]
    assert _run("sh", script, "echo", "hi", env=env).stdout.strip() == "hi"  # any other program


def test_prometheus_config_and_alert_rules_pass_promtool():
    promtool = _tool("promtool")
    for args in (
        ("check", "config", "prometheus.yml"),
        (
            "check",
            "rules",
            "alerts.yml",
            *sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.glob("baselines/*.yml")),
        ),
        ("test", "rules", "alerts_test.yml"),
    ):
        res = _run(promtool, *args, cwd=DEPLOY)
        assert res.returncode == 0, f"promtool {' '.join(args)}:\n{res.stdout}{res.stderr}"


def test_quality_baseline_from_a_committed_run_drives_the_quality_alerts(tmp_path, monkeypatch):
    """`deepsynth eval quality-baseline` on the committed rapidocr run gives deploy/baselines/rapidocr.yml, and
    with it alerts.yml fires when served confidence drops: promtool evaluates both files on fake traffic."""
    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    promtool = _tool("promtool")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "rapidocr.yml"
    args = ["eval", "quality-baseline", "bench/results/runs/rapidocr", "--model", "rapidocr", "-o", str(out)]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    committed = (DEPLOY / "baselines" / "rapidocr.yml").read_text()
    assert out.read_text() == committed
    series = {"outputs_total": "0+100x100", "output_confidence_count": "0+100x100",
              "output_confidence_sum": "0+90x100"}  # fmt: skip
    test = {
        "rule_files": [str(DEPLOY / "alerts.yml"), str(out)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": f'deepsynth_{k}{{model="rapidocr",doc_type="unknown"}}', "values": v}
                             for k, v in series.items()],
            "alert_rule_test": [{"eval_time": "95m", "alertname": "DeepSynthConfidenceDrop", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "model": "rapidocr", "doc_type": "unknown"},
                 "exp_annotations": {"summary": "Mean confidence of rapidocr on unknown documents fell to 0.900, "
                                                "more than 0.05 below its value at promotion"}}]}],
        }],
    }  # fmt: skip
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    res = _run(promtool, "test", "rules", "test.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_wiring():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"deepsynth", "deepsynth-train", "prometheus", "grafana"} <= set(services)
    build = services["deepsynth"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"].split(":-")[-1].rstrip("}")).is_file()
    for svc in services.values():  # every file mounted from deploy/ exists
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), vol
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in prom["scrape_configs"]}
    assert targets["deepsynth"] == "deepsynth:" + services["deepsynth"]["ports"][0].split(":")[-1]
    train = services["deepsynth-train"]
    assert (
        targets["deepsynth-train"]
        == f"{train['hostname']}:{train['environment']['DEEPSYNTH_TRAIN_METRICS_PORT']}"
    )
    loop = services["deepsynth-loop"]
    port = loop["command"][loop["command"].index("--metrics-port") + 1]
    assert targets["deepsynth-loop"] == f"{loop['hostname']}:{port}" and loop["command"][:2] == [
        "loop",
        "watch",
    ]
    assert (ROOT / loop["command"][2]).is_file()
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ][0]
    assert ds["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    dash_provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/deepsynth.yml").read_text())
    mount = next(v for v in services["grafana"]["volumes"] if v.startswith("./grafana/dashboards"))
    assert mount.split(":")[1] == dash_provider["providers"][0]["options"]["path"]


def test_dashboard_is_valid_and_queries_only_real_metrics(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
    exposed = {s.name for fam in text_string_to_metric_families(_full_exposition()) for s in fam.samples}
    tracker_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"deepsynth-dash-{os.getpid()}"
    tr = PrometheusTracker(tracker_dir, env={})
    tr.log_metrics(
        {"train/loss": 1.0, "train/lr": 1e-4, "train/step_seconds": 0.5, "eval/cer": 0.1, "eval/wer": 0.2}, 1
    )
    tr.close()
    exposed |= {s.name for fam in text_string_to_metric_families((tracker_dir / "metrics.prom").read_text())
                for s in fam.samples}  # fmt: skip
    shutil.rmtree(tracker_dir, ignore_errors=True)
    exposed |= {
        s.name for fam in text_string_to_metric_families(_loop_exposition(tmp_path)) for s in fam.samples
    }
    queried = set().union(*(_metric_names(e) for e in _dashboard_exprs()))
    assert len(queried) >= 20
    missing = sorted(queried - exposed)
    assert not missing, f"dashboard queries metrics nobody exposes: {missing}"
    # and the headline metrics of the issue are all on the dashboard
    for name in ("deepsynth_request_duration_seconds_bucket", "deepsynth_batch_size_sum", "deepsynth_queue_depth",
                 "deepsynth_errors_total", "deepsynth_gpu_memory_bytes", "deepsynth_training_loss",
                 "deepsynth_loop_champion_holdout_cer", "deepsynth_loop_new_documents",
                 "deepsynth_loop_runs_rejected_total", "deepsynth_loop_last_pass_timestamp_seconds"):  # fmt: skip
        assert name in queried


@pytest.mark.slow
def test_dashboard_queries_run_on_a_real_prometheus(tmp_path):
    """Start the Debian Prometheus on loopback, let it scrape a live exposition, run every dashboard query."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus binary not installed (Debian package 'prometheus')")
    from prometheus_client import start_http_server

    obs = Observability("rapidocr")
    obs.watch_model_process(os.getpid, local_gpu_memory)  # this process stands in for the model process
    server, _ = start_http_server(0, addr="127.0.0.1", registry=obs.metrics.registry)
    target_port = server.server_port

    def traffic() -> None:
        with obs.request("/v1/ocr"):
            with obs.stage("model"):
                pass
            obs.record_batch(2, 1)
            obs.record_result(pages=1, lines=2, tokens=5)

    traffic()
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(DEPLOY / "alerts.yml")],
                "scrape_configs": [
                    {"job_name": "deepsynth", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
                ],
            }
        )  # fmt: skip
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        prom_port = s.getsockname()[1]
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{prom_port}/api/v1/query?query="

    def query(expr: str) -> dict:
        with urllib.request.urlopen(base + urllib.parse.quote(expr), timeout=10) as resp:
            return json.loads(resp.read())

    try:
        deadline = time.monotonic() + 60
        while True:  # wait for at least three scrapes so rate() has points
            traffic()
            try:
                res = query('count_over_time(up{job="deepsynth"}[1m])')
                if res["data"]["result"] and float(res["data"]["result"][0]["value"][1]) >= 3:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape in 60 s"
            time.sleep(0.5)
        with_data = 0
        for expr in _dashboard_exprs():
            expr = expr.replace("$model", ".*").replace("[5m]", "[1m]")
            res = query(expr)
            assert res["status"] == "success", (expr, res)
            with_data += bool(res["data"]["result"])
        assert with_data >= 12  # server panels have data; training/GPU panels are empty without those sources
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.shutdown()
