"""The benchmarks' one declared statistic: paired median with a distribution-free CI and a cautious verdict."""

from __future__ import annotations

import pytest
from bench.stats import median_ci, paired_ratio


@pytest.mark.parametrize(
    ("n", "lo", "hi", "coverage"), [(3, 0, 2, 0.75), (8, 0, 7, 0.992), (11, 1, 9, 0.988), (30, 9, 20, 0.957)]
)
def test_median_ci_is_the_binomial_order_statistic_interval(n, lo, hi, coverage):
    assert median_ci(list(range(n)))[:2] == (lo, hi)
    assert median_ci(list(range(n)))[2] == pytest.approx(coverage, abs=1e-3)


def test_a_goal_is_judged_only_when_the_ci_is_on_one_side():
    noisy = [0.83, 0.89, 0.91, 0.93, 0.93, 0.99, 1.06, 1.07, 1.09, 1.12, 1.35]  # trainer.json's pairs
    assert paired_ratio(noisy, goal=1.05)["verdict"].startswith("unresolved")
    assert paired_ratio([1.0, 1.01, 1.02, 0.99, 1.0, 1.01], goal=1.05)["verdict"] == "met"
    assert paired_ratio([1.2, 1.3, 1.25, 1.22, 1.28, 1.21], goal=1.05)["verdict"] == "missed"
    assert paired_ratio([20, 22, 21, 25, 19, 23], goal=10, higher_is_better=True)["verdict"] == "met"
    assert paired_ratio(noisy)["median"] == 0.99 and "verdict" not in paired_ratio(noisy)
