"""The promotion gate: candidate vs champion on every type's holdout, paired bootstrap per type (the same
:func:`~deepsynth.evaluation.harness.compare_runs` as ``deepsynth eval compare``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepsynth.data import Sample
from deepsynth.evaluation.harness import RunDirError, compare_runs, evaluate_engine
from deepsynth.loop.config import GateSettings
from deepsynth.models.base import OCREngine


@dataclass
class TypeResult:
    """CER of champion and candidate on one type's holdout: change = candidate − champion with its CI."""

    doc_type: str
    n: int
    cer_champion: float | None
    cer_candidate: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None


def score_holdout(
    engine: OCREngine, holdouts: dict[str, list[Sample]], out: Path, gate: GateSettings
) -> None:
    """Evaluate ``engine`` on each type's holdout into ``out/TYPE`` (resumable run directories)."""
    for name, samples in sorted(holdouts.items()):
        evaluate_engine(engine, samples, out / name, normalize=gate.normalize, batch_size=gate.batch_size,
                        progress=False, bootstrap=0, worst=0, report=False)  # fmt: skip


def compare(champion: Path, candidate: Path, types: list[str], gate: GateSettings) -> list[TypeResult]:
    """Per type: the paired bootstrap CER change from ``champion/TYPE`` to ``candidate/TYPE``."""
    out = []
    for name in sorted(types):
        try:
            c = compare_runs(champion / name, candidate / name, normalize=gate.normalize,
                             n_resamples=gate.resamples, level=gate.level)  # fmt: skip
        except RunDirError:
            out.append(TypeResult(name, 0, None, None, None, None, None))
            continue
        cer = c["metrics"]["cer"]
        out.append(TypeResult(name, c["n_common"], cer["a"], cer["b"], cer.get("delta"), cer.get("ci_low"),
                              cer.get("ci_high")))  # fmt: skip
    return out


def decide(
    results: list[TypeResult], triggering: list[str], guarded: list[str], gate: GateSettings
) -> tuple[bool, list[str]]:
    """(promote?, reasons). Every triggering type must improve with a CI excluding 0; no ``guarded`` type may
    have a CER change whose CI upper bound exceeds ``gate.tolerance_cer_points`` (other types are reported)."""
    by_type = {r.doc_type: r for r in results}
    reasons, ok = [], True
    for name in triggering:
        r = by_type.get(name)
        if r is None or r.ci_high is None:
            ok = False
            reasons.append(f"{name}: no holdout to measure the triggering type on")
        elif r.ci_high < 0:
            reasons.append(
                f"{name}: improved, CER {_pts(r.delta)} points, CI [{_pts(r.ci_low)}, {_pts(r.ci_high)}]"
            )
        else:
            ok = False
            reasons.append(f"{name}: not better, CER {_pts(r.delta)} points, CI [{_pts(r.ci_low)}, "
                           f"{_pts(r.ci_high)}] does not exclude 0")  # fmt: skip
    tol = gate.tolerance_cer_points / 100
    for r in results:
        if r.doc_type in guarded and r.ci_high is not None and r.ci_high > tol:
            ok = False
            reasons.append(f"{r.doc_type}: worse beyond tolerance, CER {_pts(r.delta)} points, CI upper "
                           f"{_pts(r.ci_high)} > +{gate.tolerance_cer_points:g}")  # fmt: skip
    return ok, reasons


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.2f}"
