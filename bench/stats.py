"""The one statistic every paired benchmark reports: the median of per-round ratios over interleaved rounds.

Contenders run in alternating rounds (ABAB... or rotating order), so load from other processes on the shared
machine hits each round's pair alike; a round's ratio cancels that load, and the median over rounds is the
declared statistic. Its 95% confidence interval is distribution-free (order statistics of the ratios: the
binomial interval for a median), and a goal is judged only when that interval lies on one side of it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from math import comb


def _coverage(n: int, j: int) -> float:
    """P(median within [x_(j), x_(n-1-j)]) for n values (0-based order statistics)."""
    return sum(comb(n, i) for i in range(j + 1, n - j)) / 2**n


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free CI of the median: ``(x_(j), x_(n-1-j), coverage)`` with the largest j keeping
    ``level`` (with fewer than 6 values even [min, max] covers less than 95%: the coverage says how much)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no rounds")
    j = 0
    while j + 1 < n - 1 - (j + 1) and _coverage(n, j + 1) >= level:
        j += 1
    return xs[j], xs[n - 1 - j], _coverage(n, j)


def paired_ratio(
    ratios: Sequence[float], *, goal: float | None = None, higher_is_better: bool = False, level: float = 0.95
) -> dict:
    """The declared statistic of per-round ratios (A/B of one round each): median, CI, spread, goal verdict.

    ``goal`` is an upper bound on the ratio (``higher_is_better=False``, e.g. overhead <= 1.05) or a lower
    bound (``higher_is_better=True``, e.g. speedup >= 10). The verdict is ``met`` / ``missed`` only when the
    whole CI is on one side of the goal, else ``unresolved`` (the data cannot tell).
    """
    lo, hi, coverage = median_ci(ratios, level)
    out = {
        "statistic": "median of per-round paired ratios (interleaved rounds)",
        "median": round(statistics.median(ratios), 4),
        "ci": [round(lo, 4), round(hi, 4)],
        "ci_coverage": round(coverage, 3),
        "spread_min_max": [round(min(ratios), 4), round(max(ratios), 4)],
        "rounds": len(ratios),
    }
    if goal is not None:
        good, bad = (lo >= goal, hi < goal) if higher_is_better else (hi <= goal, lo > goal)
        out["goal"] = f"{'>=' if higher_is_better else '<='} {goal}"
        out["verdict"] = "met" if good else "missed" if bad else "unresolved: the CI spans the goal"
    return out
