"""Bootstrap confidence intervals for corpus rates (ratio of sums) and for paired run differences.

Every rate DeepSynth reports is a ratio of per-sample sums: CER = sum(char errors) / sum(reference chars),
a mean such as NED or the exact-line rate = sum(value) / sum(1), the truncation rate = sum(truncated) /
sum(known). Columns may be integers or floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_CELLS_PER_CHUNK = 4_000_000  # resample in chunks so B x N index matrices stay small


def _resampled_sums(columns: Sequence[np.ndarray], n_resamples: int, seed: int) -> list[np.ndarray]:
    """Sum of each column over ``n_resamples`` resamples (with replacement) of the same sample indices."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // max(n, 1))
    sums: list[list[np.ndarray]] = [[] for _ in columns]
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        for out, col in zip(sums, columns, strict=True):
            out.append(col[idx].sum(axis=1))
        done += b
    return [np.concatenate(s) for s in sums]


def _column(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    return arr.astype(np.int64) if arr.dtype.kind in "biu" else arr.astype(np.float64)


def _rates(errors: np.ndarray, totals: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, errors / np.where(totals > 0, totals, 1), np.nan)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_rate_ci(
    errors: Sequence[float] | np.ndarray,
    totals: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of sum(errors)/sum(totals) under resampling of samples (lines/pages) with replacement."""
    e, t = _column(errors), _column(totals)
    if e.shape != t.shape or e.ndim != 1:
        raise ValueError(f"errors and totals must be 1-D and equal length, got {e.shape} and {t.shape}")
    if e.size == 0:
        raise ValueError("cannot bootstrap an empty set of samples")
    se, st = _resampled_sums([e, t], n_resamples, seed)
    return _interval(_rates(se, st), level)


def paired_bootstrap_diff(
    errors_a: Sequence[float] | np.ndarray,
    totals_a: Sequence[float] | np.ndarray,
    errors_b: Sequence[float] | np.ndarray,
    totals_b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    paired: bool = True,
) -> dict[str, Any]:
    """Rate of B minus rate of A with a bootstrap CI.

    ``paired=True``: index i is the same sample in both runs and resamples pick the same indices for both.
    ``paired=False``: A and B are different samples (lengths may differ), resampled independently.
    ``p_value`` is the two-sided bootstrap p-value of "no difference" (2 x the smaller tail, at most 1).
    """
    cols = [_column(c) for c in (errors_a, totals_a, errors_b, totals_b)]
    shapes = {c.shape for c in cols} if paired else {cols[0].shape, cols[1].shape} | {cols[2].shape}
    if (paired and len(shapes) != 1) or any(c.ndim != 1 for c in cols) or cols[2].shape != cols[3].shape:
        raise ValueError(
            f"columns must be 1-D and of equal length where paired, got {[c.shape for c in cols]}"
        )
    if any(c.size == 0 for c in cols):
        raise ValueError("cannot bootstrap an empty set of samples")
    ea, ta, eb, tb = cols
    delta = float(_rates(np.array([eb.sum()]), np.array([tb.sum()]))[0]
                  - _rates(np.array([ea.sum()]), np.array([ta.sum()]))[0])  # fmt: skip
    if paired:
        sea, sta, seb, stb = _resampled_sums(cols, n_resamples, seed)
    else:
        sea, sta = _resampled_sums([ea, ta], n_resamples, seed)
        seb, stb = _resampled_sums([eb, tb], n_resamples, seed + 1)
    diffs = _rates(seb, stb) - _rates(sea, sta)
    diffs = diffs[~np.isnan(diffs)]
    lo, hi = _interval(diffs, level)
    p = min(1.0, 2.0 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean()))) if diffs.size else 1.0
    n = int(ea.size) if paired else int(ea.size + eb.size)
    return {
        "delta": delta,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p,
        "level": level,
        "n": n,
        "paired": paired,
    }
