"""The loop's Prometheus metrics and OpenTelemetry spans after a real pass: real Fraktur and typewriter lines, a
tiny PP-OCRv6-architecture model trained for two steps, the real MLflow registry and the real OTel SDK."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.data import Sample, SampleFilter, open_sources
from deepsynth.loop.config import load_loop_config
from deepsynth.loop.inbox import deliver
from deepsynth.loop.metrics import LoopMetrics
from deepsynth.loop.runner import run_once
from deepsynth.loop.state import is_holdout
from deepsynth.observability.tracing import Tracing

ROOT = Path(__file__).resolve().parents[1]


def _typed(path: Path, doc_type: str, n: int) -> list[Sample]:
    rows = [
        s
        for s in open_sources([str(path)], filter=SampleFilter(limit=n * 4))
        if not s.meta.get("has_untranscribed")
    ]
    picked = sorted(rows, key=lambda s: (len(s.text), s.id))[:n]  # short lines: cheap steps
    for s in picked:
        s.meta["doc_type"] = doc_type
    return picked


def _values(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}  # fmt: skip


@pytest.fixture
def loop_config(shared_data, tmp_path):
    from deepsynth.models.ppocr.adapter import PPOCRAdapter

    fraktur = _typed(
        shared_data / "gt4histocr_dta19_lines", "fraktur", 24
    )  # no page_id: a line is a document
    typewriter = _typed(shared_data / "tapuscorpus_fr", "typewriter", 12)  # lines of a few pages
    base = tmp_path / "base"
    chars = "".join(sorted({c for s in fraktur + typewriter for c in s.text}))
    PPOCRAdapter.tiny_random(chars, seed=0).save(base)
    raw = {
        "name": "obs", "inbox": str(tmp_path / "inbox"), "workdir": str(tmp_path / "work"),
        "recipe": str(ROOT / "configs" / "ppocr_finetune.yaml"),
        "overrides": [f"model.path={base}", "max_steps=2", "batch_size=4", "eval.times=null",
                      "eval.every_steps=0", "eval.at_start=false", "checkpoint.times=null", "checkpoint.every_steps=0",
                      "augment.p=0", "num_threads=1", "progress=false", "trackers=[jsonl]",
                      "data.group_by_length=false"],
        "trigger": {"min_new": 20, "min_interval_minutes": 0},
        "holdout": {"key": "id", "fraction": 0.25, "max_eval": 8},
        "gate": {"resamples": 100},
    }  # fmt: skip
    config = tmp_path / "loop.yaml"
    config.write_text(f"# deepsynth loop run {config}\n" + yaml.safe_dump(raw))
    deliver(tmp_path / "inbox", "001", fraktur + typewriter, "jsonl")
    (tmp_path / "inbox" / "002-scan.pdf").write_bytes(b"%PDF-1.4 not a dataset")
    return config, fraktur, typewriter


def test_a_pass_emits_its_steps_as_spans_and_publishes_per_type_gauges(loop_config, tmp_path):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    config, fraktur, typewriter = loop_config
    cfg = load_loop_config(config)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    report = run_once(cfg, log=lambda _: None, tracing=Tracing(provider))
    (record,) = report.runs
    assert record["types"] == ["fraktur"] and record["stage"] == "done"

    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time)
    assert [s.name for s in spans] == ["loop.pass", "loop.scan", "loop.decide", "loop.run", "loop.train",
                                       "loop.gate", "loop.register", "loop.promote"]  # fmt: skip
    by = {s.name: s for s in spans}
    root = by["loop.pass"]
    assert root.parent is None and root.attributes["deepsynth.loop"] == "obs"
    for name in ("loop.scan", "loop.decide", "loop.run"):
        assert by[name].parent.span_id == root.context.span_id, name
    for name in ("loop.train", "loop.gate", "loop.register", "loop.promote"):
        assert by[name].parent.span_id == by["loop.run"].context.span_id, name
    assert all(s.context.trace_id == root.context.trace_id for s in spans)
    a = {name: dict(s.attributes) for name, s in by.items()}
    assert (
        a["loop.scan"]["deepsynth.loop.new_samples"] == 36
        and a["loop.scan"]["deepsynth.loop.entries_bad"] == 1
    )
    assert a["loop.decide"]["deepsynth.loop.firing"] == ("fraktur",)
    assert a["loop.decide"]["deepsynth.loop.doc_types"] == ("fraktur", "typewriter")
    assert (
        a["loop.run"]["deepsynth.loop.run_id"] == record["run_id"]
        and a["loop.run"]["deepsynth.loop.model"] == "obs-fraktur"
    )
    assert a["loop.train"]["deepsynth.loop.steps"] == 2 and a["loop.train"]["deepsynth.loop.start"] == "base"
    assert a["loop.gate"]["deepsynth.loop.promote"] is record["gate"]["promote"]
    assert a["loop.gate"]["deepsynth.loop.holdout_types"] == ("fraktur", "typewriter")
    assert a["loop.register"]["deepsynth.loop.version"] == "1"
    assert a["loop.promote"]["deepsynth.loop.decision"] == record["decision"]
    assert spans[-1].end_time <= root.end_time

    # v1 champion by hand (whatever the gate decided), then a second pass through the CLI: nothing new to train
    runner = CliRunner()
    res = runner.invoke(app, ["loop", "promote", "obs-fraktur", "1", "-c", str(config)])
    assert res.exit_code == 0, res.output
    deliver(tmp_path / "inbox", "003", typewriter[:2], "jsonl")  # seen before: nothing new
    textfile = tmp_path / "textfile" / "loop.prom"
    res = runner.invoke(app, ["loop", "run", str(config), "--metrics-textfile", str(textfile)])
    assert res.exit_code == 0, res.output
    text = textfile.read_text()
    v = _values(text)
    pages = len({s.meta["page_id"] for s in typewriter})
    holdout = {t: sum(is_holdout(t, s.id, 0.25, 0) for s in rows) for t, rows in
               (("fraktur", fraktur), ("typewriter", typewriter))}  # fmt: skip
    promoted = record["decision"] == "promoted"
    cer = next(r["cer_candidate"] for r in record["gate"]["results"] if r["doc_type"] == "fraktur")
    expected = {
        ("deepsynth_loop_labelled_documents", "fraktur"): 24, ("deepsynth_loop_labelled_documents", "typewriter"): pages,
        ("deepsynth_loop_labelled_samples", "fraktur"): 24, ("deepsynth_loop_labelled_samples", "typewriter"): 12,
        ("deepsynth_loop_new_documents", "fraktur"): 0, ("deepsynth_loop_new_documents", "typewriter"): pages,
        ("deepsynth_loop_holdout_samples", "fraktur"): holdout["fraktur"],
        ("deepsynth_loop_holdout_samples", "typewriter"): holdout["typewriter"],
        ("deepsynth_loop_trigger_ready", "fraktur"): 0, ("deepsynth_loop_trigger_ready", "typewriter"): 0,
        ("deepsynth_loop_runs_triggered_total", "fraktur"): 1, ("deepsynth_loop_runs_triggered_total", "typewriter"): 0,
        ("deepsynth_loop_runs_promoted_total", "fraktur"): int(promoted),
        ("deepsynth_loop_runs_rejected_total", "fraktur"): int(not promoted),
        ("deepsynth_loop_runs_rejected_total", "typewriter"): 0,
    }  # fmt: skip
    for (name, t), value in expected.items():
        assert v[(name, (("doc_type", t), ("loop", "obs")))] == value, (name, t)
    champ = (("doc_type", "fraktur"), ("loop", "obs"), ("model", "obs-fraktur"))
    assert v[("deepsynth_loop_champion_version", champ)] == 1
    assert v[("deepsynth_loop_champion_holdout_cer", champ)] == pytest.approx(cer) and 0 < cer <= 1
    assert not any(
        k[0].startswith("deepsynth_loop_champion") and ("doc_type", "typewriter") in k[1] for k in v
    )
    assert v[("deepsynth_loop_pending_runs", (("loop", "obs"),))] == 0
    assert v[("deepsynth_loop_inbox_entries", (("loop", "obs"), ("status", "bad")))] == 1
    assert v[("deepsynth_loop_inbox_entries", (("loop", "obs"), ("status", "ok")))] == 2
    assert v[("deepsynth_loop_last_pass_duration_seconds", (("loop", "obs"),))] > 0
    assert (tmp_path / "work" / "metrics.prom").exists() is False  # the textfile went where it was asked
    promtool = shutil.which("promtool")
    if promtool is not None:
        res = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
        )
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()

    # the same metrics live on a loopback /metrics endpoint (what `loop watch --metrics-port` serves)
    live = LoopMetrics(cfg, port=0, env={})
    try:
        live.update(1.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{live.port}/metrics", timeout=10) as resp:
            body = _values(resp.read().decode())
        assert body[("deepsynth_loop_champion_holdout_cer", champ)] == pytest.approx(cer)
        assert body[("deepsynth_loop_last_pass_duration_seconds", (("loop", "obs"),))] == 1.5
    finally:
        live.close()
    assert (tmp_path / "work" / "metrics.prom").is_file()  # default textfile: WORKDIR/metrics.prom
