"""Alignment ops and bootstrap intervals used in reports and run comparisons."""

from __future__ import annotations

import random

import jiwer
import numpy as np
import pytest

from deepsynth.evaluation.alignment import align, corpus_confusions, error_counts, top_confusions
from deepsynth.evaluation.bootstrap import bootstrap_rate_ci, paired_bootstrap_diff


def test_char_alignment_positions_and_text():
    ops = align("hello world", "helo wrld!", equal=False)
    assert [(o.op, o.ref_start, o.ref_end, o.ref, o.hyp) for o in ops] == [
        ("delete", 3, 4, "l", ""),
        ("delete", 7, 8, "o", ""),
        ("insert", 11, 11, "", "!"),
    ]
    assert ops[2].hyp_start == 9 and ops[2].hyp_end == 10


def test_alignment_reconstructs_both_sides():
    rng = random.Random(3)
    for _ in range(100):
        ref = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 20))).strip()
        hyp = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 20))).strip()
        ops = align(ref, hyp)
        assert "".join(o.ref for o in ops) == ref
        assert "".join(o.hyp for o in ops) == hyp


def test_alignment_counts_match_jiwer():
    rng = random.Random(5)
    for _ in range(100):
        ref = " ".join(rng.choice(["a", "bb", "c", "dd"]) for _ in range(rng.randint(1, 8)))
        hyp = " ".join(rng.choice(["a", "bb", "c", "e"]) for _ in range(rng.randint(0, 8)))
        out = jiwer.process_words(ref, hyp)
        counts = error_counts(align(ref, hyp, unit="word"))
        assert counts == {
            "hits": out.hits,
            "substitutions": out.substitutions,
            "deletions": out.deletions,
            "insertions": out.insertions,
        }


def test_word_alignment_and_bad_unit():
    ops = align("the cat sat", "the bat sat down", unit="word", equal=False)
    assert [(o.op, o.ref, o.hyp) for o in ops] == [("substitute", "cat", "bat"), ("insert", "", "down")]
    with pytest.raises(ValueError, match="unit must be"):
        align("a", "b", unit="line")


def test_confusions():
    top = corpus_confusions(["rn rn", "ſ"], ["m m", "s"], k=3)
    assert top == [("r", "m", 2), ("n", "", 2), ("ſ", "s", 1)]
    assert top_confusions([("a", "b"), ("a", "b"), ("c", "")], k=1) == [("a", "b", 2)]


def test_bootstrap_ci_brackets_rate_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    totals = rng.integers(20, 60, size=2000)
    errors = rng.binomial(totals, 0.05)
    lo, hi = bootstrap_rate_ci(errors, totals, n_resamples=500)
    point = errors.sum() / totals.sum()
    assert lo < point < hi and hi - lo < 0.01
    lo_s, hi_s = bootstrap_rate_ci(errors[:100], totals[:100], n_resamples=500)
    assert hi_s - lo_s > hi - lo
    assert bootstrap_rate_ci(errors, totals, seed=1) == bootstrap_rate_ci(errors, totals, seed=1)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_rate_ci([], [])


def test_paired_difference_detects_real_improvement_only():
    rng = np.random.default_rng(1)
    totals = rng.integers(20, 60, size=800)
    errs_a = rng.binomial(totals, 0.06)
    better = np.maximum(errs_a - rng.binomial(1, 0.6, size=800), 0)
    d = paired_bootstrap_diff(errs_a, totals, better, totals, n_resamples=500)
    assert d["delta"] < 0 and d["ci_high"] < 0 and d["p_value"] < 0.01
    same = paired_bootstrap_diff(errs_a, totals, errs_a, totals, n_resamples=200)
    assert same["delta"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_diff([1], [2], [1, 2], [2, 2])


def test_mean_rates_and_unpaired_differences_bootstrap_too():
    rng = np.random.default_rng(2)
    ned = rng.beta(1, 20, size=500)  # float column: a mean is sum(value) / sum(1)
    lo, hi = bootstrap_rate_ci(ned, np.ones(500, dtype=int), n_resamples=400)
    assert lo < ned.mean() < hi and hi - lo < 0.02
    exact_a = rng.binomial(1, 0.5, size=300)
    exact_b = rng.binomial(1, 0.8, size=200)  # other samples: resampled independently
    d = paired_bootstrap_diff(exact_a, np.ones(300), exact_b, np.ones(200), paired=False, n_resamples=400)
    assert d["paired"] is False and d["n"] == 500 and 0 < d["ci_low"] < d["delta"] < d["ci_high"]
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_diff(exact_a, np.ones(300), exact_b, np.ones(200))
