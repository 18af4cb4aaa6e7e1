"""`deepsynth eval` and `deepsynth eval compare` end to end on the real shared data (a few lines per set)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deepsynth.cli.main import app


def _tesseract_available() -> bool:
    from deepsynth.models.baselines.tesseract_engine import TesseractUnavailable, check_available

    try:
        check_available()
    except TesseractUnavailable:
        return False
    return True


@pytest.mark.slow
def test_eval_both_baselines_then_compare(shared_data, tmp_path):
    if not _tesseract_available():
        pytest.skip("Tesseract with eng+fra+deu not installed (make system-deps)")
    runner = CliRunner()
    data = [
        f"--data=tapus={shared_data / 'tapuscorpus_fr'}",
        f"--data={shared_data / 'gt4histocr_dta19_lines'}",
    ]
    common = [*data, "--limit", "4", "--no-progress", "--bootstrap", "200"]
    a = runner.invoke(
        app, ["eval", "-e", "rapidocr", "--engine-opt", "threads=1", *common, "-o", str(tmp_path / "a")]
    )
    assert a.exit_code == 0, a.output
    b = runner.invoke(
        app, ["eval", "-e", "tesseract", *common, "-n", "ocr_standard", "-o", str(tmp_path / "b")]
    )
    assert b.exit_code == 0, b.output
    for run in ("a", "b"):
        assert {p.name for p in (tmp_path / run).iterdir()} >= {
            "predictions.jsonl",
            "metrics.json",
            "report.html",
        }
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert ma["engine"] == "rapidocr-3.10-ppocrv6-small[line]" and ma["normalize"] == "none"
    assert ma["n"] + sum(ma["excluded"]["counts"].values()) == 8 and set(ma["per_language"]) <= {"fr", "de"}
    assert "CER" in a.output and "rapidocr-3.10-ppocrv6-small[line]" in a.output
    # rerun resumes: nothing new is read
    again = runner.invoke(app, ["eval", "-e", "rapidocr", *common, "-o", str(tmp_path / "a")])
    assert again.exit_code == 0 and "new 0" in again.output
    cmp = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", "-"])
    assert cmp.exit_code == 0, cmp.output
    result = json.loads(cmp.output)
    assert result["normalize"] == "none" and result["n_common"] >= 6
    assert (
        result["metrics"]["cer"]["ci_low"]
        <= result["metrics"]["cer"]["delta"]
        <= result["metrics"]["cer"]["ci_high"]
    )
    table = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert table.exit_code == 0 and "Δ (B-A)" in table.output and "tesseract" in table.output


def test_eval_usage_errors(tmp_path, shared_data):
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "-e", "rapidocr", "-d", str(shared_data / "gt4histocr_dta19_lines")])
    assert r.exit_code == 2 and "missing --out" in r.output
    r = runner.invoke(
        app, ["eval", "-e", "rapidocr", "-d", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "nope" in r.output
    r = runner.invoke(app, ["eval", "-e", "nosuch", "-d", str(shared_data / "gt4histocr_dta19_lines"),
                            "-o", str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code == 2 and "unknown engine 'nosuch'" in r.output
    r = runner.invoke(app, ["eval", "-e", "rapidocr", "-d", str(shared_data / "gt4histocr_dta19_lines"),
                            "-n", "nfc+wat", "-o", str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code == 2 and "unknown normalisation step 'wat'" in r.output
    r = runner.invoke(app, ["eval", "compare", str(tmp_path), str(tmp_path)])
    assert r.exit_code == 2 and "no predictions.jsonl" in r.output
