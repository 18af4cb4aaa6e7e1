"""Finished evaluation runs as inputs of the leaderboard and drift checks: loading with one-line errors,
dataset attribution per sample, grouping, and scoring a group (with paired comparisons on shared samples).

Every rate comes from :func:`~deepsynth.evaluation.metrics.rate_columns` and every interval from
:mod:`~deepsynth.evaluation.bootstrap`, the same code as ``metrics.json`` and ``eval compare``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsynth.evaluation.harness import METRICS, RunDirError, load_run, score_records
from deepsynth.evaluation.metrics import GROUP_KEYS as METRIC_GROUPS
from deepsynth.evaluation.metrics import rate_columns

GROUP_KEYS = ("dataset", *METRIC_GROUPS, "level")  # record fields a run can be split by
LOWER_IS_BETTER = {"cer": True, "wer": True, "ned": True, "exact_match": False, "repetition_rate": True,
                   "truncation_rate": True, "mean_sample_cer_clipped": True}  # fmt: skip


def dataset_name(spec: str) -> tuple[str, str]:
    """(name, path) of a ``--data`` spec as recorded in metrics.json (the path need not exist here)."""
    head, sep, tail = spec.partition("=")
    if sep and head and "/" not in head:
        name, path = head, tail
    else:
        name, path = "", spec
    path = path.split(":", 1)[0] if ":" in path and not os.path.exists(path) else path
    if not name:
        p = Path(path)
        name = p.parent.name if p.name == "manifest.jsonl" else p.stem
    return name, os.path.normpath(path)


@dataclass
class Run:
    """One finished run: its scored records (engine errors dropped), each tagged with its ``dataset``."""

    path: Path
    engine: str
    normalize: str
    datasets: list[str]  # of its scored samples
    declared: list[str]  # the names of its --data sources
    records: dict[str, dict[str, Any]] = field(repr=False)
    label: str = ""

    def group_values(self, key: str) -> set[str]:
        return {str(r.get(key)) for r in self.records.values() if r.get(key) is not None}


def load_scored_run(run_dir: str | Path) -> Run:
    """Load a run for comparison; RunDirError (one line, naming the run) when it cannot be used."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: not a directory")
    if not (path / METRICS).is_file():
        raise RunDirError(f"{path}: no {METRICS} (not a finished `deepsynth eval` run)")
    metrics, records = load_run(path)
    specs = metrics.get("dataset") or []
    named = [dataset_name(s) for s in specs]
    scored: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("error") is not None or r.get("hyp") is None:
            continue
        source = os.path.normpath(str(r.get("source") or ""))
        match = [n for n, p in named if source.startswith(p)]
        r["dataset"] = match[0] if match else (named[0][0] if len(named) == 1 else "unknown")
        scored[r["id"]] = r
    if not scored:
        raise RunDirError(f"{path}: no scored samples in its predictions")
    engine = str(metrics.get("engine") or path.name)
    present = sorted({r["dataset"] for r in scored.values()})
    declared = sorted(n for n, _ in named) or present
    return Run(path, engine, str(metrics.get("normalize") or "none"), present, declared, scored)


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """Load several runs; labels are engine names, with the run directory added where two share one."""
    runs = [load_scored_run(d) for d in run_dirs]
    seen = [r.engine for r in runs]
    for r in runs:
        r.label = r.engine if seen.count(r.engine) == 1 else f"{r.engine} ({r.path.name})"
    return runs


def present_group_keys(runs: Sequence[Run]) -> list[str]:
    """The GROUP_KEYS every run's samples carry (runs written before a key existed lack it)."""
    return [k for k in GROUP_KEYS if all(any(k in r for r in run.records.values()) for run in runs)]


def check_group_keys(runs: Iterable[Run], keys: Sequence[str]) -> None:
    """RunDirError naming the run when a group key is not a field of its samples."""
    for run in runs:
        for key in keys:
            if not any(key in r for r in run.records.values()):
                raise RunDirError(
                    f"{run.path}: unknown group key {key!r} (its samples have {', '.join(GROUP_KEYS)})"
                )


def common_profile(runs: Sequence[Run], normalize: str | None) -> str:
    """The normalisation to score every run with: ``normalize``, else the runs' shared profile."""
    if normalize:
        return normalize
    profiles = {r.normalize for r in runs}
    if len(profiles) > 1:
        listed = ", ".join(f"{r.path}: {r.normalize}" for r in runs)
        raise RunDirError(f"runs were scored with different normalisation ({listed}); pass --normalize")
    return profiles.pop()


@dataclass
class Scored:
    """One run on one group of samples: its summary (with CIs) and per-sample rate columns by id."""

    run: Run
    summary: dict[str, Any]
    ids: list[str]
    columns: dict[str, tuple[np.ndarray, np.ndarray]]


def score(run: Run, records: list[dict[str, Any]], profile: str, n_resamples: int) -> Scored:
    """Summary of ``records`` (95% bootstrap CI for every rate) and their per-sample rate columns."""
    summary, m = score_records(records, profile, bootstrap=n_resamples)
    return Scored(run, summary, [str(i) for i in m.ids], rate_columns(m.arrays()))


def paired_delta(
    a: Scored, b: Scored, metric: str, *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any] | None:
    """B minus A on ``metric`` with a 95% CI: paired on the samples both scored, else unpaired (None when the
    rate is undefined). RunDirError when a shared sample id has different references in the two runs."""
    from deepsynth.evaluation.bootstrap import paired_bootstrap_diff

    num_a, den_a = a.columns[metric]
    num_b, den_b = b.columns[metric]
    index_b = {sid: i for i, sid in enumerate(b.ids)}
    shared = [(i, index_b[sid]) for i, sid in enumerate(a.ids) if sid in index_b]
    differ = [a.ids[i] for i, j in shared if a.run.records[a.ids[i]]["ref"] != b.run.records[b.ids[j]]["ref"]]
    if differ:
        raise RunDirError(
            f"{b.run.path}: {len(differ)} sample(s) have other references than in {a.run.path}, e.g. "
            f"{differ[0]!r} (runs on different datasets?)"
        )
    kw = {"n_resamples": n_resamples, "seed": seed}
    if shared:
        ia, ib = (np.array(x) for x in zip(*shared, strict=True))
        num_a, den_a, num_b, den_b = num_a[ia], den_a[ia], num_b[ib], den_b[ib]
    if den_a.sum() == 0 or den_b.sum() == 0:
        return None
    return paired_bootstrap_diff(num_a, den_a, num_b, den_b, paired=bool(shared), **kw)


def select(
    run: Run, dataset: str | None = None, key: str | None = None, value: str | None = None
) -> list[dict[str, Any]]:
    """The run's records on ``dataset`` (all if None) and, with ``key``, whose ``key`` equals ``value``."""
    return [
        r
        for r in run.records.values()
        if (dataset is None or r["dataset"] == dataset) and (key is None or str(r.get(key)) == value)
    ]
