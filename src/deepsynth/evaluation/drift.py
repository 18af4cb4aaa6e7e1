"""``deepsynth eval drift BASELINE NEW --max-increase 0.5``: did a new run get worse than its baseline, overall
or in any subset / language / level, by more than a threshold?

Both runs are rescored from their predictions with one normalisation profile. Each group is compared with a
paired bootstrap on the samples both runs scored. A group **fails** when the metric got worse by more than
``max_increase`` percentage points and the 95% CI of the change excludes 0 (the worsening is not noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepsynth.evaluation.harness import RunDirError
from deepsynth.evaluation.runs import (
    LOWER_IS_BETTER,
    check_group_keys,
    common_profile,
    load_runs,
    paired_delta,
    present_group_keys,
    score,
    select,
)


def check_drift(
    baseline: str | Path,
    new: str | Path,
    *,
    max_increase: float = 0.5,
    by: Sequence[str] | None = None,
    metric: str = "cer",
    normalize: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-group paired comparison NEW - BASELINE; ``result["failed"]`` lists the groups beyond the threshold.

    ``max_increase`` is in percentage points of ``metric`` (for ``exact_match``, a decrease is the worsening).
    ``by`` defaults to every group key both runs' samples carry (dataset, language, subset, doc_type, level).
    Raises RunDirError (one line naming the run) for runs without metrics, on other datasets, or group keys
    their samples do not have.
    """
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(LOWER_IS_BETTER)})")
    if max_increase < 0:
        raise ValueError(f"--max-increase must be >= 0 percentage points, got {max_increase}")
    base, cand = load_runs([baseline, new])
    if base.declared != cand.declared:
        raise RunDirError(f"{cand.path}: evaluated on {cand.declared}, the baseline {base.path} on "
                          f"{base.declared} (runs on different datasets)")  # fmt: skip
    shared = base.records.keys() & cand.records.keys()
    if not shared:
        raise RunDirError(f"{cand.path}: shares no scored sample id with the baseline {base.path}")
    by = present_group_keys([base, cand]) if by is None else by
    check_group_keys([base, cand], by)
    profile = common_profile([base, cand], normalize)
    sign = 1 if LOWER_IS_BETTER[metric] else -1
    groups = []
    cells: list[tuple[str, str | None]] = [("all", None)]
    for key in by:
        cells += [(key, v) for v in sorted(base.group_values(key) & cand.group_values(key))]
    for key, value in cells:
        pick = (None, None) if value is None else (key, value)
        recs_a = [r for r in select(base, None, *pick) if r["id"] in shared]
        recs_b = [r for r in select(cand, None, *pick) if r["id"] in shared]
        if not recs_a:
            continue
        a = score(base, recs_a, profile, 0)
        b = score(cand, recs_b, profile, 0)
        d = paired_delta(a, b, metric, n_resamples=n_resamples, seed=seed)
        if d is None:
            continue
        worse_by = sign * d["delta"]
        significant = (d["ci_low"] > 0) if sign > 0 else (d["ci_high"] < 0)
        groups.append({
            "group": key, "value": value, "n": len(recs_a), "baseline": a.summary[metric], "new": b.summary[metric],
            **{k: d[k] for k in ("delta", "ci_low", "ci_high", "p_value")},
            "worse_by": worse_by, "failed": bool(worse_by * 100 > max_increase and significant),
        })  # fmt: skip
    failed = [g for g in groups if g["failed"]]
    return {
        "baseline": str(base.path),
        "new": str(cand.path),
        "engine_baseline": base.engine,
        "engine_new": cand.engine,
        "metric": metric,
        "normalize": profile,
        "max_increase_pp": max_increase,
        "n_shared": len(shared),
        "only_baseline": len(base.records) - len(shared),
        "only_new": len(cand.records) - len(shared),
        "groups": groups,
        "failed": failed,
        "ok": not failed,
    }
