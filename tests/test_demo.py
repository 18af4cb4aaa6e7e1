"""`deepsynth demo` end to end on a few real Fraktur books: before/after evaluation around a short fine-tune."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepsynth.config import load_config
from deepsynth.data import open_sources
from deepsynth.training.config import TrainConfig
from deepsynth.training.data import sample_filter

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "gt4histocr_dta19"


def _books_by_split() -> dict[str, list[str]]:
    cfg = load_config(TrainConfig, ROOT / "configs" / "ppocr_demo.yaml")
    return {
        split: sorted(
            {s.subset for s in open_sources([str(EXAMPLES)], filter=sample_filter(cfg.data, split, None))}
        )
        for split in ("train", "val", "test")
    }


def test_demo_split_is_by_book_and_disjoint():
    books = _books_by_split()
    assert all(books.values())
    assert not set(books["train"]) & set(books["test"]) and not set(books["val"]) & set(books["test"])
    assert sum(map(len, books.values())) == 38


@pytest.mark.slow
def test_demo_end_to_end_on_a_few_books(tmp_path):
    # 3 short lines from each of 2 train, 1 val and 1 test book, so the whole flow runs in seconds
    books = _books_by_split()
    keep = {*books["train"][:2], books["val"][0], books["test"][0]}
    small = tmp_path / "data"
    (small / "images" / "lines").mkdir(parents=True)
    rows = [json.loads(line) for line in (EXAMPLES / "manifest.jsonl").read_text().splitlines()]
    picked = []
    for book in sorted(keep):
        picked += sorted((r for r in rows if r["subset"] == book), key=lambda r: len(r["text"]))[:3]
    for r in picked:
        shutil.copy(EXAMPLES / r["image"], small / r["image"])
    (small / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked))

    from deepsynth.cli.main import app

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--data", str(small), "--config", str(ROOT / "configs" / "ppocr_demo.yaml"),
            "max_steps=2", "batch_size=2", "eval.every_steps=1", "checkpoint.every_steps=0", "num_threads=1"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert f"deepsynth serve --model {out / 'best'}" in " ".join(res.output.split())
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["test_books"] == [books["test"][0]] and summary["n_test_lines"] == 3
    before = json.loads((out / "eval_before" / "metrics.json").read_text())
    after = json.loads((out / "eval_after" / "metrics.json").read_text())
    assert summary["rows"][0]["before"] == pytest.approx(before["cer"])
    assert summary["rows"][0]["after"] == pytest.approx(after["cer"])
    train_chars = {c for r in picked if r["subset"] in books["train"][:2] for c in r["text"]}
    added = summary["train"]["added_chars"]  # characters the shipped list lacks (here „ and/or combining e)
    assert summary["train"]["steps"] == 2 and added and set(added) <= train_chars
    for report in summary["reports"]:
        assert Path(report).stat().st_size > 1000
    # rerunning replaces the previous demo output; a foreign directory is never deleted
    (tmp_path / "mine").mkdir()
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "mine"), "--data", str(small)])
    assert res.exit_code == 2 and "not written by `deepsynth demo`" in res.output
