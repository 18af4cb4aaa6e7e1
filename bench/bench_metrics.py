"""CER + WER over 100k synthetic line pairs: DeepSynth vs jiwer 4 vs a bare rapidfuzz loop, in one run.

Goals: identical numbers; DeepSynth >= 10x faster than jiwer; within 1.3x of the bare loop.
Each contender runs ``REPEATS`` times on the same data; the best time counts (least disturbed by the
shared machine).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

N_PAIRS = 100_000
REPEATS = 3
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


def _best(fn: Callable[[list[str], list[str]], tuple[float, float]], refs, hyps, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(refs, hyps)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> dict:
    refs, hyps = make_pairs()
    t_bare, v_bare = _best(bare_loop, refs, hyps, REPEATS)
    t_ds, v_ds = _best(deepsynth_metrics, refs, hyps, REPEATS)
    t_jw, v_jw = _best(jiwer_metrics, refs, hyps, 1)  # slow: once is enough for a >10x ratio
    equal = all(abs(a - b) <= 1e-12 for a, b in zip((*v_ds, *v_bare), (*v_jw, *v_jw), strict=True))
    speedup = t_jw / t_ds
    overhead = t_ds / t_bare
    return {
        "pairs": len(refs),
        "cer": v_ds[0],
        "wer": v_ds[1],
        "equal_numbers": equal,
        "seconds": {
            "deepsynth": round(t_ds, 4),
            "jiwer": round(t_jw, 4),
            "bare_rapidfuzz_loop": round(t_bare, 4),
        },
        "speedup_vs_jiwer": round(speedup, 1),
        "ratio_vs_bare_loop": round(overhead, 3),
        "goals": {"equal": equal, "speedup>=10": speedup >= 10, "ratio_vs_bare<=1.3": overhead <= 1.3},
        "repeats": REPEATS,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
