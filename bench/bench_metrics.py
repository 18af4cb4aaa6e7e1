"""CER + WER over 100k synthetic line pairs: DeepSynth vs jiwer 4 vs a bare rapidfuzz loop, in one run.

Goals: identical numbers; DeepSynth >= 10x faster than jiwer; within 1.3x of the bare loop.
``ROUNDS`` interleaved rounds, the contenders' order rotating from round to round; each round gives two paired
ratios: bare loop vs DeepSynth on all pairs, and jiwer vs DeepSynth on the first ``JIWER_PAIRS`` (jiwer is
slow). The declared statistic of each is the median of its per-round ratios with a distribution-free CI
(bench/stats.py); a goal is judged only when the CI is on one side of it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from bench.stats import paired_ratio

N_PAIRS = 100_000
JIWER_PAIRS = 20_000
ROUNDS = 7  # with 6 or more rounds the median's [min, max] interval covers >= 95%
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'-äöüßéèàçſ"


def make_pairs(n: int = N_PAIRS, seed: int = 0) -> tuple[list[str], list[str]]:
    """Line-like references (5-15 words) and OCR-like hypotheses (a few char edits, sometimes more)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(ALPHABET[:62]) for _ in range(rng.randint(1, 10))) for _ in range(5000)]
    refs, hyps = [], []
    for _ in range(n):
        ref = " ".join(rng.choice(words) for _ in range(rng.randint(5, 15)))
        chars = list(ref)
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 8))):
            pos = rng.randrange(len(chars) + 1)
            op = rng.random()
            if op < 0.5 and pos < len(chars):
                chars[pos] = rng.choice(ALPHABET)
            elif op < 0.75:
                chars.insert(pos, rng.choice(ALPHABET))
            elif pos < len(chars):
                del chars[pos]
        refs.append(ref)
        hyps.append("".join(chars))
    return refs, hyps


def bare_loop(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    """The floor: one fused pass, str.split() words, no validation or edge cases."""
    from rapidfuzz.distance import Levenshtein

    dist = Levenshtein.distance
    ce = cr = we = wr = 0
    for r, h in zip(refs, hyps, strict=True):
        r, h = r.strip(), h.strip()
        ce += dist(r, h)
        cr += len(r)
        rw, hw = r.split(), h.split()
        we += dist(rw, hw)
        wr += len(rw)
    return ce / cr, we / wr


def deepsynth_metrics(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    from deepsynth.evaluation.metrics import cer, wer

    return cer(refs, hyps), wer(refs, hyps)


def jiwer_metrics(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    import jiwer

    return jiwer.cer(refs, hyps), jiwer.wer(refs, hyps)


def _timed(fn: Callable[[list[str], list[str]], tuple[float, float]], refs, hyps):
    t0 = time.perf_counter()
    out = fn(refs, hyps)
    return time.perf_counter() - t0, out


def main() -> dict:
    refs, hyps = make_pairs()
    few = (refs[:JIWER_PAIRS], hyps[:JIWER_PAIRS])
    runs = {
        "bare_rapidfuzz_loop": (bare_loop, refs, hyps),
        "deepsynth": (deepsynth_metrics, refs, hyps),
        "deepsynth_small": (deepsynth_metrics, *few),
        "jiwer_small": (jiwer_metrics, *few),
    }
    for fn, a, b in runs.values():  # imports and first-call setup stay out of the rounds
        fn(a[:100], b[:100])
    times: dict[str, list[float]] = {name: [] for name in runs}
    values: dict[str, tuple[float, float]] = {}
    for r in range(ROUNDS):
        order = list(runs)[r % len(runs) :] + list(runs)[: r % len(runs)]  # rotate who runs first
        for name in order:
            fn, a, b = runs[name]
            t, values[name] = _timed(fn, a, b)
            times[name].append(t)
    equal = all(
        abs(x - y) <= 1e-12
        for x, y in [*zip(values["deepsynth"], values["bare_rapidfuzz_loop"], strict=True),
                     *zip(values["deepsynth_small"], values["jiwer_small"], strict=True)]
    )  # fmt: skip
    ds, bare = times["deepsynth"], times["bare_rapidfuzz_loop"]
    speedup = [j / d for j, d in zip(times["jiwer_small"], times["deepsynth_small"], strict=True)]
    return {
        "pairs": len(refs),
        "jiwer_pairs": JIWER_PAIRS,
        "cer": values["deepsynth"][0],
        "wer": values["deepsynth"][1],
        "equal_numbers": equal,
        "seconds_per_round": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
        "speedup_jiwer_over_deepsynth": paired_ratio(speedup, goal=10, higher_is_better=True),
        "ratio_deepsynth_over_bare_loop": paired_ratio(
            [d / b for d, b in zip(ds, bare, strict=True)], goal=1.3
        ),
        "rounds": ROUNDS,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
