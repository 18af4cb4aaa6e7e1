"""evaluate_engine / compare_runs: artefacts, resumability, bad input, exclusions, paired comparison."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import jiwer
import pytest
from PIL import Image

from deepsynth.data.sample import Sample
from deepsynth.evaluation.harness import RunDirError, compare_runs, evaluate_engine, read_predictions
from deepsynth.models.base import Prediction


class InfoEngine:
    """A deterministic test engine: returns the text stored in each image's ``info["hyp"]`` and counts calls.

    Images with ``info["boom"]`` make the whole batch fail, like a model crashing on one input.
    """

    def __init__(self, name: str = "info-engine") -> None:
        self.name = name
        self.seen: list[str] = []

    def recognize(self, images: Sequence[Image.Image], generation=None) -> list[Prediction]:
        if any(img.info.get("boom") for img in images):
            raise RuntimeError("model crashed")
        self.seen.extend(img.info["hyp"] for img in images)
        return [Prediction(text=img.info["hyp"], finished=img.info.get("finished")) for img in images]


def _sample(i: int, ref: str, hyp: str, **kw) -> Sample:
    img = Image.new("RGB", (40 + i, 12), "white")
    img.info["hyp"] = hyp
    for key in ("boom", "finished"):
        if key in kw:
            img.info[key] = kw.pop(key)
    return Sample.from_image(f"s{i:03d}", img, ref, language=kw.pop("language", "en"),
                             subset=kw.pop("subset", f"book{i % 2}"), **kw)  # fmt: skip


def _corpus(n: int) -> list[Sample]:
    pairs = [("the quick brown fox", "the quick brown fox"), ("jumps over", "jumps ovr"),
             ("Straße ſchön", "Strasse schön"), ("lazy dog", "lazy dog dog")]  # fmt: skip
    return [_sample(i, *pairs[i % len(pairs)]) for i in range(n)]


def _unreadable(i: int) -> Sample:
    def load() -> Image.Image:
        return Image.open(io.BytesIO(b"definitely not an image"))

    return Sample(id=f"bad{i}", text="text", image_loader=load, subset="book0")


def test_artifacts_metrics_and_report(tmp_path):
    samples = _corpus(8)
    result = evaluate_engine(InfoEngine(), samples, tmp_path / "run", batch_size=3, progress=False,
                             dataset="unit", bootstrap=200)  # fmt: skip
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"predictions.jsonl", "metrics.json", "report.html"}
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["engine"] == "info-engine" and saved["dataset"] == ["unit"] and saved["normalize"] == "none"
    refs, hyps = [s.text for s in samples], [s.image.info["hyp"] for s in samples]
    assert saved["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-9) == result["cer"]
    assert saved["n"] == 8 and set(saved["per_subset"]) == {"book0", "book1"}
    assert saved["cer_ci"][0] <= saved["cer"] <= saved["cer_ci"][1]
    records = read_predictions(run / "predictions.jsonl")
    assert [r["id"] for r in records] == [s.id for s in samples]
    assert records[1] == records[1] | {"ref": "jumps over", "hyp": "jumps ovr", "subset": "book1"}
    html = (run / "report.html").read_text()
    assert "normalisation profile: <b>none</b>" in html and "data:image/png;base64" in html
    assert "data:image/jpeg;base64" in html and "<del>" in html and "CER histogram" in html


def test_resume_skips_done_ids_and_matches_a_fresh_run(tmp_path):
    first = InfoEngine()
    evaluate_engine(
        first, _corpus(6), tmp_path / "a", batch_size=4, progress=False, bootstrap=0, report=False
    )
    second = InfoEngine()
    resumed = evaluate_engine(
        second, _corpus(10), tmp_path / "a", batch_size=4, progress=False, bootstrap=0, report=False
    )
    assert len(first.seen) == 6 and len(second.seen) == 4
    assert resumed["resumed"] == 6 and resumed["new"] == 4
    fresh = evaluate_engine(
        InfoEngine(), _corpus(10), tmp_path / "b", progress=False, bootstrap=0, report=False
    )
    for key in ("n", "cer", "wer", "ned", "exact_match", "per_subset"):
        assert resumed[key] == fresh[key]


def test_torn_last_line_is_repaired_and_redone(tmp_path):
    evaluate_engine(InfoEngine(), _corpus(3), tmp_path, progress=False, bootstrap=0, report=False)
    pred = tmp_path / "predictions.jsonl"
    lines = pred.read_text().splitlines(keepends=True)
    pred.write_text("".join(lines[:2]) + lines[2][:25])  # crash in the middle of writing s002
    engine = InfoEngine()
    result = evaluate_engine(engine, _corpus(3), tmp_path, progress=False, bootstrap=0, report=False)
    assert len(engine.seen) == 1 and result["n"] == 3
    assert [r["id"] for r in read_predictions(pred)] == ["s000", "s001", "s002"]


def test_unreadable_images_and_engine_errors_are_reported_not_raised(tmp_path):
    samples = [*_corpus(3), _unreadable(1), _sample(7, "ok line", "ok line", boom=True), _sample(8, "x", "x")]
    result = evaluate_engine(InfoEngine(), samples, tmp_path, batch_size=8, progress=False, bootstrap=0)
    assert [e["id"] for e in result["unreadable"]] == ["bad1"]
    assert "unreadable image" in result["unreadable"][0]["error"]
    assert [e["id"] for e in result["engine_errors"]] == ["s007"]
    assert "RuntimeError: model crashed" in result["engine_errors"][0]["error"]
    assert result["n"] == 4  # the 3 corpus lines + s008, scored despite sharing a batch with the crash
    assert "bad1" in (tmp_path / "report.html").read_text()


def test_flagged_samples_are_excluded_by_default(tmp_path):
    flagged = _sample(5, "mot ~~~ illisible", "mot xyz illisible", meta={"has_untranscribed": True})
    engine = InfoEngine()
    result = evaluate_engine(
        engine, [*_corpus(2), flagged], tmp_path / "x", progress=False, bootstrap=0, report=False
    )
    assert result["n"] == 2 and result["excluded"]["counts"] == {"has_untranscribed": 1}
    assert result["excluded"]["ids"] == ["s005"] and len(engine.seen) == 2
    kept = evaluate_engine(
        InfoEngine(), [flagged], tmp_path / "y", exclude_flags=(), progress=False, bootstrap=0
    )
    assert kept["n"] == 1


def test_normalisation_profile_is_applied_and_stated(tmp_path):
    samples = [_sample(0, "Straße ſchön ef¬", "Straße ſchön ef-"), _sample(1, "A  b", "A b")]
    none = evaluate_engine(InfoEngine(), samples, tmp_path / "n", progress=False, bootstrap=0, report=False)
    std = evaluate_engine(InfoEngine(), samples, tmp_path / "s", normalize="ocr_standard", progress=False,
                          bootstrap=0, report=False)  # fmt: skip
    assert none["cer"] > 0 and std["cer"] == 0 and std["normalize"] == "ocr_standard"
    with pytest.raises(ValueError, match="unknown normalisation step"):
        evaluate_engine(
            InfoEngine(), samples, tmp_path / "z", normalize="nfc+bogus", progress=False, report=False
        )


def test_empty_reference_and_hypothesis_and_truncation(tmp_path):
    samples = [_sample(0, "", ""), _sample(1, "", "ghost"), _sample(2, "abc", "", finished=False),
               _sample(3, "abcd", "abcd", finished=True)]  # fmt: skip
    result = evaluate_engine(InfoEngine(), samples, tmp_path, progress=False, bootstrap=0, report=False)
    assert result["cer"] == pytest.approx(jiwer.cer(["", "", "abc", "abcd"], ["", "ghost", "", "abcd"]))
    assert result["truncation_rate"] == 0.5
    assert result["exact_match"] == 0.5


def test_other_engine_in_same_run_dir_is_refused(tmp_path):
    evaluate_engine(InfoEngine("engine-a"), _corpus(2), tmp_path, progress=False, bootstrap=0, report=False)
    with pytest.raises(RunDirError, match="engine 'engine-a', not 'engine-b'"):
        evaluate_engine(
            InfoEngine("engine-b"), _corpus(2), tmp_path, progress=False, bootstrap=0, report=False
        )


def test_compare_runs_paired_delta(tmp_path):
    refs = [f"line number {i} of the test corpus" for i in range(60)]
    worse = [_sample(i, r, r.replace("e", "c", 2)) for i, r in enumerate(refs)]
    better = [_sample(i, r, r if i % 3 else r.replace("e", "c", 1)) for i, r in enumerate(refs)]
    evaluate_engine(InfoEngine("a"), worse, tmp_path / "a", progress=False, bootstrap=0, report=False)
    evaluate_engine(InfoEngine("b"), better[:50], tmp_path / "b", progress=False, bootstrap=0, report=False)
    cmp = compare_runs(tmp_path / "a", tmp_path / "b", n_resamples=300)
    assert cmp["n_common"] == 50 and cmp["only_a"] == 10 and cmp["only_b"] == 0
    cer = cmp["metrics"]["cer"]
    assert cer["delta"] < 0 and cer["ci_high"] < 0 and cer["p_value"] < 0.01
    assert cer["a"] == pytest.approx(jiwer.cer(refs[:50], [worse[i].image.info["hyp"] for i in range(50)]))
    exact, ned = cmp["metrics"]["exact_match"], cmp["metrics"]["ned"]  # every rate has a paired CI now
    assert exact["delta"] > 0 and exact["ci_low"] > 0 and ned["ci_high"] < 0
    assert set(cmp["per_subset"]) == {"book0", "book1"}
    with pytest.raises(RunDirError, match="no predictions.jsonl"):
        compare_runs(tmp_path / "a", tmp_path / "nothing")
    evaluate_engine(
        InfoEngine("c"), [_sample(0, "different ref", "x")], tmp_path / "c", progress=False, report=False
    )
    with pytest.raises(RunDirError, match="references differ"):
        compare_runs(tmp_path / "a", tmp_path / "c")


def test_corrupt_middle_line_is_a_clear_error(tmp_path):
    evaluate_engine(InfoEngine(), _corpus(3), tmp_path, progress=False, bootstrap=0, report=False)
    pred = tmp_path / "predictions.jsonl"
    lines = pred.read_text().splitlines(keepends=True)
    pred.write_text(lines[0] + "{oops\n" + "".join(lines[1:]))
    with pytest.raises(RunDirError, match=r"predictions.jsonl:2: invalid JSON"):
        evaluate_engine(InfoEngine(), _corpus(3), tmp_path, progress=False, bootstrap=0, report=False)
