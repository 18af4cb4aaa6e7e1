"""Run an OCREngine over a stream of samples: predictions.jsonl (resumable), metrics.json, report.html.

``predictions.jsonl`` holds one JSON object per sample (raw reference and hypothesis, never normalised),
appended and flushed after every batch, so an interrupted run loses at most one batch and a rerun into the same
directory skips every id already there. Metrics are always recomputed from the whole file with the requested
normalisation profile, so a resumed run and a fresh run give identical numbers.
"""

from __future__ import annotations

import heapq
import json
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepsynth.data.sample import Sample, SampleError
from deepsynth.evaluation.metrics import GROUP_KEYS, OCRMetrics, rate_columns, sample_cer
from deepsynth.evaluation.normalize import get_normalizer
from deepsynth.models.base import OCREngine, Prediction
from deepsynth.models.generation import GenerationConfig

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
REPORT = "report.html"
RUN_INFO = "run.json"
DEFAULT_EXCLUDE = ("has_untranscribed",)


class RunDirError(ValueError):
    """An output directory that holds a different run (other engine) or unreadable predictions."""


def iter_predictions(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the records of a predictions.jsonl; a torn last line (interrupted write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as fh:
        pending: tuple[int, str] | None = None
        for i, line in enumerate(fh, 1):
            if pending is not None:  # only the final line may be torn
                raise RunDirError(f"{path}:{pending[0]}: invalid JSON ({pending[1]})")
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                pending = (i, exc.msg)
        if pending is not None:
            log.warning("%s: ignoring torn last line %d", path, pending[0])


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """All records of a predictions.jsonl (see :func:`iter_predictions`)."""
    return list(iter_predictions(path))


def _repair_tail(path: Path) -> None:
    """Cut a torn final line so appended records start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _image_path(sample: Sample) -> str | None:
    path = getattr(sample.image_loader, "path", None)
    return str(path) if path is not None else None


def _thumbnail(sample: Sample) -> bytes | None:
    try:
        img = sample.image.copy()
    except SampleError:
        return None
    from deepsynth.evaluation.report import thumbnail_jpeg

    return thumbnail_jpeg(img)


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for s in samples:
        batch.append(s)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _record(sample: Sample, pred: Prediction | None, error: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": sample.id,
        "ref": sample.text,
        "hyp": None if pred is None else pred.text,
        "language": sample.language,
        "subset": sample.subset,
        "doc_type": sample.doc_type,
        "level": sample.level,
        "source": sample.meta.get("origin"),
        "image": _image_path(sample),
    }
    if pred is not None:
        rec.update(
            finished=pred.finished,
            confidence=pred.confidence,
            num_tokens=pred.num_tokens,
            seconds=pred.meta.get("seconds"),
        )
    if error is not None:
        rec["error"] = error
    return rec


def recognize_records(
    engine: OCREngine, batch: list[Sample], generation: GenerationConfig | None
) -> list[dict[str, Any]]:
    """Records for one batch; unreadable images and engine failures become error records (never a crash)."""
    readable, records = [], {}
    for s in batch:
        try:
            _ = s.image
            readable.append(s)
        except SampleError as exc:
            records[s.id] = _record(s, None, f"unreadable image: {exc.reason}")
    if readable:
        t0 = time.perf_counter()
        try:
            preds = engine.recognize([s.image for s in readable], generation)
            if len(preds) != len(readable):
                raise RuntimeError(f"engine returned {len(preds)} predictions for {len(readable)} images")
            per_image = (time.perf_counter() - t0) / len(readable)
            for s, p in zip(readable, preds, strict=True):
                p.meta.setdefault("seconds", round(per_image, 4))
                records[s.id] = _record(s, p)
        except Exception as exc:  # isolate the failing image: retry one by one
            if len(readable) == 1:
                records[readable[0].id] = _record(
                    readable[0], None, f"engine error: {type(exc).__name__}: {exc}"
                )
            else:
                for s in readable:
                    records.update({r["id"]: r for r in recognize_records(engine, [s], generation)})
    return [records[s.id] for s in batch]


class WorstSamples:
    """The ``n`` records with the highest sample CER seen so far, with a JPEG thumbnail each (for the report)."""

    def __init__(self, n: int, normalize: str):
        self.n = n
        self._scorer = get_normalizer(normalize)
        self._heap: list[tuple[float, str, bytes]] = []

    def offer(self, rec: dict[str, Any], thumbnail: Callable[[], bytes | None]) -> None:
        """Consider a record; ``thumbnail()`` is only called when it enters the worst ``n``."""
        if not self.n or rec.get("error") is not None or rec.get("hyp") is None:
            return
        score = sample_cer(self._scorer(rec["ref"]), self._scorer(rec["hyp"]), clip=True)
        if len(self._heap) < self.n or score > self._heap[0][0]:
            jpeg = thumbnail()
            if jpeg is not None:
                push = heapq.heappush if len(self._heap) < self.n else heapq.heapreplace
                push(self._heap, (score, rec["id"], jpeg))

    def thumbnails(self) -> dict[str, bytes]:
        return {sid: jpeg for _, sid, jpeg in self._heap}


def score_records(
    records: Iterable[dict[str, Any]], normalize: str = "none", *, bootstrap: int = 1000
) -> tuple[dict[str, Any], OCRMetrics]:
    """OCRMetrics summary over prediction records (error records are skipped)."""
    metrics = OCRMetrics(normalize)
    for r in records:
        if r.get("error") is None and r.get("hyp") is not None:
            groups = {k: r.get(k) for k in GROUP_KEYS}
            metrics.update(r["ref"], r["hyp"], **groups, finished=r.get("finished"), sample_id=r["id"])
    return metrics.summary(bootstrap=bootstrap), metrics


def score_samples(
    engine: OCREngine,
    samples: Iterable[Sample],
    *,
    normalize: str = "none",
    batch_size: int = 8,
    generation: GenerationConfig | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, records) of ``engine`` on ``samples`` in memory (the trainer's periodic evaluation): the same
    batches and per-image error isolation as :func:`evaluate_engine`, no run directory, no bootstrap."""
    records: list[dict[str, Any]] = []
    for batch in _batches(samples, batch_size):
        records += recognize_records(engine, batch, generation)
        for s in batch:
            s.release()
    summary, _ = score_records(records, normalize, bootstrap=0)
    return summary, records


def evaluate_engine(
    engine: OCREngine,
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    normalize: str = "none",
    batch_size: int = 8,
    generation: GenerationConfig | None = None,
    progress: bool = True,
    exclude_flags: Iterable[str] = DEFAULT_EXCLUDE,
    dataset: str | list[str] | None = None,
    total: int | None = None,
    bootstrap: int = 1000,
    worst: int = 25,
    report: bool = True,
) -> dict[str, Any]:
    """Evaluate ``engine`` on ``samples``; writes predictions.jsonl, metrics.json and report.html in ``out_dir``.

    Samples carrying a truthy flag from ``exclude_flags`` in their meta (default: ``has_untranscribed``) are
    not run and not scored; unreadable images and engine failures are recorded by id and reported, not raised.
    Returns the metrics dict (also written to metrics.json).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    get_normalizer(normalize)  # fail fast on a bad profile, before any work
    out = Path(out_dir)
    engine_name = getattr(engine, "name", type(engine).__name__)
    datasets = open_run_dir(out, engine_name, dataset)
    pred_path = out / PREDICTIONS
    _repair_tail(pred_path)
    done = {r["id"] for r in iter_predictions(pred_path)}
    excluded = Excluded(tuple(exclude_flags))
    worst_samples = WorstSamples(worst, normalize)
    n_new = n_resumed = 0
    t_start = time.perf_counter()

    def pending() -> Iterator[Sample]:
        nonlocal n_resumed
        for s in samples:
            if s.id in done:
                n_resumed += 1
            elif not excluded.check(s):
                yield s

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"eval {engine_name}", unit="img", dynamic_ncols=True)
    with pred_path.open("a", encoding="utf-8") as fh:
        for batch in _batches(pending(), batch_size):
            for rec, s in zip(recognize_records(engine, batch, generation), batch, strict=True):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done.add(s.id)
                n_new += 1
                worst_samples.offer(rec, lambda s=s: _thumbnail(s))
                s.release()
            fh.flush()
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return finish_run(
        out, engine_name, datasets, normalize=normalize, excluded=excluded, resumed=n_resumed, new=n_new,
        seconds=time.perf_counter() - t_start, generation=generation, bootstrap=bootstrap,
        thumbnails=worst_samples.thumbnails(), worst=worst, report=report,
    )  # fmt: skip


def open_run_dir(out: Path, engine_name: str, dataset: str | list[str] | None) -> list[str]:
    """Create ``out`` for a run of ``engine_name`` (refusing one that holds another engine's predictions);
    returns the dataset list recorded in run.json."""
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / PREDICTIONS
    info_path = out / RUN_INFO
    if info_path.is_file():
        previous = json.loads(info_path.read_text(encoding="utf-8")).get("engine")
        if previous != engine_name and pred_path.is_file() and pred_path.stat().st_size:
            raise RunDirError(f"{out} holds predictions of engine {previous!r}, not {engine_name!r}; "
                              "use another --out directory")  # fmt: skip
    datasets = [dataset] if isinstance(dataset, str) else list(dataset or [])
    info_path.write_text(json.dumps({"engine": engine_name, "dataset": datasets}, indent=2) + "\n")
    return datasets


class Excluded:
    """Samples left out because they carry a truthy flag (e.g. ``has_untranscribed``): counts and ids."""

    def __init__(self, flags: tuple[str, ...] = DEFAULT_EXCLUDE):
        self.flags = flags
        self.counts: Counter[str] = Counter()
        self.ids: list[str] = []

    def check(self, sample: Sample) -> bool:
        """True (and counted) when ``sample`` is excluded."""
        hit = [f for f in self.flags if sample.meta.get(f)]
        if hit:
            self.counts.update(hit)
            self.ids.append(sample.id)
        return bool(hit)

    def to_dict(self) -> dict[str, Any]:
        return {"flags": list(self.flags), "counts": dict(self.counts), "ids": self.ids[:1000]}


def finish_run(
    out: Path,
    engine_name: str,
    datasets: list[str],
    *,
    normalize: str,
    excluded: Excluded,
    resumed: int,
    new: int,
    seconds: float,
    generation: GenerationConfig | None = None,
    bootstrap: int = 1000,
    thumbnails: dict[str, bytes] | None = None,
    worst: int = 25,
    report: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``out/predictions.jsonl`` (always the whole file) into metrics.json and report.html."""
    pred_path = out / PREDICTIONS
    errors: list[dict[str, str]] = []
    secs: list[float] = []
    n_records = 0

    def scan() -> Iterator[dict[str, Any]]:
        nonlocal n_records
        for r in iter_predictions(pred_path):
            n_records += 1
            if r.get("error"):
                errors.append({"id": r["id"], "error": r["error"]})
            if isinstance(r.get("seconds"), int | float):
                secs.append(r["seconds"])
            yield r

    summary, _ = score_records(scan(), normalize, bootstrap=bootstrap)
    result: dict[str, Any] = {
        "engine": engine_name,
        "dataset": datasets,
        "normalize": normalize,
        **summary,
        "n_predictions": n_records,
        "unreadable": [e for e in errors if e["error"].startswith("unreadable")],
        "engine_errors": [e for e in errors if not e["error"].startswith("unreadable")],
        "excluded": excluded.to_dict(),
        "resumed": resumed,
        "new": new,
        "seconds_per_image_median": statistics.median(secs) if secs else None,
        "wall_seconds": round(seconds, 2),
        "generation": generation.to_dict() if generation is not None else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    result["normalize"] = normalize  # the profile the numbers were computed with, stated explicitly
    (out / METRICS).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if report:
        from deepsynth.evaluation.report import write_report

        write_report(out / REPORT, result, iter_predictions(pred_path), normalize=normalize,
                     thumbnails=thumbnails or {}, worst=worst)  # fmt: skip
    return result


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics.json contents or {}, prediction records) of a run directory."""
    run = Path(run_dir)
    pred = run / PREDICTIONS
    if not pred.is_file():
        raise RunDirError(f"{run} has no {PREDICTIONS}: not an evaluation run directory")
    metrics_path = run / METRICS
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return metrics, read_predictions(pred)


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    normalize: str | None = None,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired comparison of two runs on the samples both scored: B minus A with bootstrap CIs.

    ``normalize`` defaults to run A's profile. Negative CER/WER deltas mean B is better.
    """
    from deepsynth.evaluation.bootstrap import paired_bootstrap_diff

    meta_a, recs_a = load_run(run_a)
    meta_b, recs_b = load_run(run_b)
    profile = normalize or meta_a.get("normalize") or "none"
    ok_a = {r["id"]: r for r in recs_a if r.get("error") is None and r.get("hyp") is not None}
    ok_b = {r["id"]: r for r in recs_b if r.get("error") is None and r.get("hyp") is not None}
    common = [i for i in ok_a if i in ok_b]
    if not common:
        raise RunDirError(f"{run_a} and {run_b} share no scored sample ids; nothing to compare")
    mismatched = [i for i in common if ok_a[i]["ref"] != ok_b[i]["ref"]]
    if mismatched:
        raise RunDirError(f"references differ between runs for {len(mismatched)} ids, e.g. {mismatched[0]!r}")
    sum_a, m_a = score_records((ok_a[i] for i in common), profile, bootstrap=0)
    sum_b, m_b = score_records((ok_b[i] for i in common), profile, bootstrap=0)
    cols_a, cols_b = rate_columns(m_a.arrays()), rate_columns(m_b.arrays())
    kw = {"n_resamples": n_resamples, "level": level, "seed": seed}
    rows: dict[str, Any] = {}
    for key, (num_a, den_a) in cols_a.items():  # every rate with its paired CI
        a, b = sum_a[key], sum_b[key]
        num_b, den_b = cols_b[key]
        if a is None or b is None or den_a.sum() == 0 or den_b.sum() == 0:
            rows[key] = {"a": a, "b": b, "delta": None if a is None or b is None else b - a}
        else:
            rows[key] = {"a": a, "b": b, **paired_bootstrap_diff(num_a, den_a, num_b, den_b, **kw)}
    per_subset = {
        name: {"n": sub["n"], "cer_a": sub["cer"], "cer_b": sum_b["per_subset"][name]["cer"],
               "delta": sum_b["per_subset"][name]["cer"] - sub["cer"]}
        for name, sub in sum_a["per_subset"].items()
    }  # fmt: skip
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "engine_a": meta_a.get("engine"),
        "engine_b": meta_b.get("engine"),
        "normalize": profile,
        "n_common": len(common),
        "only_a": len(ok_a) - len(common),
        "only_b": len(ok_b) - len(common),
        "metrics": rows,
        "per_subset": per_subset,
    }
