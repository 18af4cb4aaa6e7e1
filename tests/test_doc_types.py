"""Document types: manifest `doc_type` (falling back to `subset`), the --doc-type filter, per-type counts in
`data stats` and per-type metrics in `deepsynth eval` (metrics.json and report.html), on real Fraktur lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.data import Sample, SampleFilter, open_sources
from deepsynth.evaluation.metrics import OCRMetrics


def _typed_manifest(shared_data: Path, tmp_path: Path, n: int = 6) -> str:
    """The first ``n`` Fraktur lines: odd rows typed ``letter``, even rows without doc_type (-> subset)."""
    src = shared_data / "gt4histocr_dta19_lines"
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines()[:n]]
    for i, row in enumerate(rows):
        if i % 2:
            row["doc_type"] = "letter"
    path = tmp_path / "typed.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return f"typed={path}:{src}"


def test_doc_type_falls_back_to_subset():
    assert Sample("a", "x", subset="book", meta={"doc_type": "receipt"}).doc_type == "receipt"
    assert Sample("b", "x", subset="book").doc_type == "book"
    assert Sample("c", "x", subset="book", meta={"doc_type": "  "}).doc_type == "book"
    assert Sample("d", "x").doc_type is None


def test_filter_and_stats_per_doc_type(shared_data, tmp_path):
    spec = _typed_manifest(shared_data, tmp_path)
    letters = list(open_sources([spec], filter=SampleFilter(doc_types=["letter"])))
    assert len(letters) == 3 and {s.doc_type for s in letters} == {"letter"}
    out = tmp_path / "stats.json"
    res = CliRunner().invoke(app, ["data", "stats", spec, "--json", str(out)])
    assert res.exit_code == 0, res.output
    stats = json.loads(out.read_text())
    assert stats["by_doc_type"]["letter"] == 3 and sum(stats["by_doc_type"].values()) == 6
    assert "doc_type" in res.output
    res = CliRunner().invoke(app, ["data", "stats", spec, "--doc-type", "letter", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["by_doc_type"] == {"letter": 3}


def test_metrics_group_per_doc_type():
    m = OCRMetrics()
    m.update("abcd", "abcd", subset="s1", doc_type="receipt")
    m.update("abcd", "abxx", subset="s1", doc_type="invoice")
    per = m.summary()["per_doc_type"]
    assert per["receipt"]["cer"] == 0.0 and per["invoice"]["cer"] == 0.5
    assert m.summary()["per_subset"]["s1"]["n"] == 2


@pytest.mark.slow
def test_eval_doc_type_filter_and_breakdown(shared_data, tmp_path):
    spec = _typed_manifest(shared_data, tmp_path)
    common = ["eval", "-e", "rapidocr", "--engine-opt", "threads=1", "-d", spec, "--no-progress",
              "--bootstrap", "50"]  # fmt: skip
    res = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert metrics["per_doc_type"]["letter"]["n"] == 3
    assert sum(g["n"] for g in metrics["per_doc_type"].values()) == 6
    assert "<th class=l>doc type</th>" in (tmp_path / "all" / "report.html").read_text()
    res = CliRunner().invoke(app, [*common, "--doc-type", "letter", "-o", str(tmp_path / "letters")])
    assert res.exit_code == 0, res.output
    only = json.loads((tmp_path / "letters" / "metrics.json").read_text())
    assert only["n"] == 3 and list(only["per_doc_type"]) == ["letter"]
