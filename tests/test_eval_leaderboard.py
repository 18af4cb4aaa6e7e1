"""`deepsynth eval leaderboard` and `eval drift` on run directories written by the real harness (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.evaluation.drift import check_drift
from deepsynth.evaluation.harness import RunDirError, evaluate_engine
from deepsynth.evaluation.leaderboard import build_leaderboard, to_markdown
from deepsynth.evaluation.runs import LOWER_IS_BETTER
from tests.test_eval_harness import InfoEngine, _sample

ROOT = Path(__file__).resolve().parents[1]
REFS = [f"line {i} of the {'quick brown fox' if i % 2 else 'lazy dog'} corpus" for i in range(80)]
DATASETS = ["alpha=data/alpha", "beta=data/beta"]


def _typo(text: str, n: int = 1) -> str:
    return text.replace("o", "0", n)


def _run(tmp_path, name: str, hyp, refs=REFS, datasets=DATASETS, **kw) -> Path:
    """A run of a deterministic engine whose output for sample i is ``hyp(i, ref)``; even samples come from
    data/alpha, odd ones from data/beta (as the JSONL reader records their origin)."""
    samples = []
    for i, ref in enumerate(refs):
        s = _sample(i, ref, hyp(i, ref))
        s.meta["origin"] = f"data/{'alpha' if i % 2 == 0 else 'beta'}/manifest.jsonl:{i + 1}"
        samples.append(s)
    out = tmp_path / name
    evaluate_engine(InfoEngine(name), samples, out, progress=False, bootstrap=0, report=False,
                    dataset=datasets, **kw)  # fmt: skip
    return out


@pytest.fixture()
def runs(tmp_path):
    return {
        "perfect": _run(tmp_path, "perfect", lambda i, r: r),
        "near": _run(tmp_path, "near", lambda i, r: _typo(r) if i == 7 else r),  # one typo: not different
        "poor": _run(tmp_path, "poor", lambda i, r: _typo(r, 3) if i % 3 else r),
    }


def test_leaderboard_ranks_per_dataset_and_group_and_marks_ties(runs, tmp_path):
    board = build_leaderboard([runs["poor"], runs["near"], runs["perfect"]], by=["subset", "language"],
                              n_resamples=400)  # fmt: skip
    assert [s["dataset"] for s in board["datasets"]] == ["alpha", "beta"]
    alpha, beta = board["datasets"]
    assert [r["engine"] for r in alpha["rows"]] == ["near", "perfect", "poor"]  # equal CER: by name
    assert [r["engine"] for r in beta["rows"]] == ["perfect", "near", "poor"]
    near = beta["rows"][1]
    assert near["tied_with_above"] and near["vs_above"]["paired"] and near["vs_above"]["n"] == 40
    poor = beta["rows"][2]
    assert not poor["tied_with_above"] and poor["vs_above"]["ci_low"] > 0
    assert all(r["n"] == 40 for s in board["datasets"] for r in s["rows"])
    for key in LOWER_IS_BETTER:  # every rate has its interval
        if key != "truncation_rate":  # InfoEngine reports no finished flag
            lo, hi = poor[f"{key}_ci"]
            assert lo <= poor[key] <= hi
    assert set(beta["groups"]["subset"]) == {"book1"} and set(alpha["groups"]["subset"]) == {"book0"}
    md = to_markdown(board)
    assert "| 2 ≈ | near |" in md and "| 3 | poor |" in md
    assert "perfect 0.00% (0.00–0.00) ≈ near" in md and "< poor" in md


def test_unpaired_neighbours_when_runs_share_no_sample(tmp_path):
    a = _run(tmp_path, "first", lambda i, r: r, refs=REFS[:40])
    shifted = [_sample(100 + i, r, _typo(r, 3)) for i, r in enumerate(REFS[:40])]
    for s in shifted:
        s.meta["origin"] = "data/alpha/manifest.jsonl:9"
    evaluate_engine(InfoEngine("second"), shifted, tmp_path / "second", progress=False, bootstrap=0,
                    report=False, dataset=["alpha=data/alpha"])  # fmt: skip
    board = build_leaderboard([a, tmp_path / "second"], n_resamples=300)
    second = board["datasets"][0]["rows"][1]
    assert second["vs_above"]["paired"] is False and not second["tied_with_above"]


def test_cli_leaderboard_writes_json_markdown_html(runs, tmp_path):
    out = tmp_path / "board"
    res = CliRunner().invoke(app, ["eval", "leaderboard", *map(str, runs.values()), "-o", str(out),
                                   "--by", "subset", "--resamples", "200"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "beta: 1 perfect 0.00% / 2≈ near" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "cer" and len(summary["runs"]) == 3
    assert "<table>" in (out / "leaderboard.html").read_text() and (out / "leaderboard.md").is_file()


def test_bad_input_gives_one_line_error_naming_the_run(runs, tmp_path):
    runner = CliRunner()
    bare = tmp_path / "bare"
    shutil.copytree(runs["near"], bare)
    (bare / "metrics.json").unlink()
    other = _run(tmp_path, "other", lambda i, r: r, datasets=["gamma=data/gamma"])
    relabeled = _run(tmp_path, "relabeled", lambda i, r: r, refs=[r.upper() for r in REFS])
    cases = [
        (["leaderboard", str(runs["near"]), str(bare), "-o", str(tmp_path / "x")], f"{bare}: no metrics.json"),
        (["leaderboard", str(runs["near"]), "-o", str(tmp_path / "x"), "--by", "box"],
         f"{runs['near']}: unknown group key 'box'"),
        (["leaderboard", str(runs["near"]), str(relabeled), "-o", str(tmp_path / "x")],
         "other references than in"),
        (["leaderboard", str(runs["near"]), "-o", str(tmp_path / "x"), "--metric", "speed"], "unknown metric"),
        (["drift", str(runs["near"]), str(other)], f"{other}: evaluated on ['gamma']"),
        (["drift", str(runs["near"]), str(bare)], f"{bare}: no metrics.json"),
        (["drift", str(runs["near"]), str(runs["poor"]), "--by", "writer"], "unknown group key 'writer'"),
        (["drift", str(tmp_path / "nope"), str(runs["poor"])], "nope: not a directory"),
    ]  # fmt: skip
    for args, message in cases:
        res = runner.invoke(app, ["eval", *args])
        assert res.exit_code == 2, (args, res.output)
        err = res.output.strip()
        assert message in " ".join(err.split()) and err.startswith("error:"), (args, err)


def test_drift_fails_only_on_a_significant_worsening_beyond_the_threshold(runs, tmp_path):
    # the new run is worse on subset book1 only (odd samples), by 3 typos in 2 of 3 lines
    worse = _run(tmp_path, "worse", lambda i, r: _typo(r, 3) if i % 2 and i % 3 else r)
    res = check_drift(runs["perfect"], worse, max_increase=0.5, n_resamples=400)
    failed = {(g["group"], g["value"]) for g in res["failed"]}
    assert failed == {
        ("all", None),
        ("dataset", "beta"),
        ("subset", "book1"),
        ("doc_type", "book1"),  # a sample's doc_type defaults to its subset
        ("language", "en"),
        ("level", "line"),
    }
    assert not res["ok"] and res["n_shared"] == 80
    book0 = next(g for g in res["groups"] if g["value"] == "book0")
    assert book0["delta"] == 0 and not book0["failed"]
    # a worsening below the threshold, or not significant (one typo), passes
    assert check_drift(runs["perfect"], worse, max_increase=20, n_resamples=300)["ok"]
    assert check_drift(runs["perfect"], runs["near"], max_increase=0.0, n_resamples=300)["ok"]
    # an improvement never fails, and exact_match (higher is better) fails on a decrease
    assert check_drift(worse, runs["perfect"], n_resamples=300)["ok"]
    assert not check_drift(runs["perfect"], worse, metric="exact_match", n_resamples=300)["ok"]

    runner = CliRunner()
    out = tmp_path / "drift.json"
    res = runner.invoke(app, ["eval", "drift", str(runs["perfect"]), str(worse), "--json", str(out),
                              "--by", "subset", "--resamples", "300"])  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "subset=book1" in res.output and "FAIL" in res.output
    assert json.loads(out.read_text())["failed"][0]["value"] is None  # the overall group first
    res = runner.invoke(app, ["eval", "drift", str(runs["perfect"]), str(runs["near"]), "--resamples", "300"])
    assert res.exit_code == 0, res.output


def test_check_drift_rejects_runs_sharing_no_sample(tmp_path):
    a = _run(tmp_path, "a", lambda i, r: r, refs=REFS[:10])
    b = tmp_path / "b"
    samples = [_sample(50 + i, r, r) for i, r in enumerate(REFS[:10])]
    for s in samples:
        s.meta["origin"] = "data/alpha/manifest.jsonl:1"
    evaluate_engine(InfoEngine("b"), samples, b, progress=False, bootstrap=0, report=False, dataset=DATASETS)
    with pytest.raises(RunDirError, match="shares no scored sample"):
        check_drift(a, b)


def test_docs_leaderboard_is_generated_from_the_committed_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    runs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bench/results/runs").iterdir())
    board = build_leaderboard(runs, by=["subset", "language"])
    assert to_markdown(board) == (ROOT / "docs/leaderboard.md").read_text(encoding="utf-8")


def test_quality_baseline_counts_signals_per_doc_type_like_the_server(tmp_path):
    from deepsynth.evaluation.quality_baseline import baseline_rules, quality_baseline

    loop = "the same words again " * 12  # a decoding loop the serving guard flags
    hyps = {0: ("", True), 1: (loop, True), 2: ("fine", False), 3: ("fine", True)}
    samples = [_sample(i, "fine", hyps[i % 4][0], finished=hyps[i % 4][1]) for i in range(40)]
    evaluate_engine(InfoEngine("gen"), samples, tmp_path / "gen", progress=False, bootstrap=0, report=False)
    base = quality_baseline(tmp_path / "gen", doc_type_key="subset")
    assert set(base) == {"book0", "book1"}  # i % 2
    assert base["book0"] == {"n": 20, "empty_rate": 0.5, "repetition_rate": 0.0, "truncation_rate": 0.5}
    assert base["book1"] == {"n": 20, "empty_rate": 0.0, "repetition_rate": 0.5, "truncation_rate": 0.0}
    rules = baseline_rules(base, "gen-model")
    assert "vector(0.5)" in rules and "doc_type: book1" in rules and "signal: mean_confidence" not in rules
    assert set(quality_baseline(tmp_path / "gen")) == {"unknown"}
    with pytest.raises(RunDirError, match="unknown group key 'box'"):
        quality_baseline(tmp_path / "gen", doc_type_key="box")
