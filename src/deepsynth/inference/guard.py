"""Repetition guard and olmOCR-style retry policy for generative OCR outputs.

Generative OCR models sometimes loop ("the the the ...") or run into the token limit without an end token.
:func:`find_repetition` flags a text in which one n-gram occurs ``threshold`` times or more, or whose tail is
one short unit repeated ``threshold`` times or more; :func:`trim_tail_loop` keeps one copy of such a tail loop.
:func:`retry_generation` gives the decoding settings for retry attempt ``k`` (olmOCR retries unfinished pages
with sampling at rising temperature; we also forbid the repeated n-gram on retries).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from deepsynth.models.generation import GenerationConfig

RETRY_TEMPERATURES = (0.1, 0.2, 0.3, 0.5, 0.8, 1.0)


def _units(text: str) -> tuple[list[str], str]:
    """Words when the text has spaces, else characters (CJK, or a run of one symbol)."""
    words = text.split()
    if len(words) >= 4:
        return words, " "
    return list(text.replace(" ", "")), ""


def tail_loop(units: list[str], min_repeats: int, max_period: int = 16) -> tuple[int, int] | None:
    """(start, period) of the shortest unit of <= max_period items repeated >= min_repeats times at the end."""
    n = len(units)
    for period in range(1, max_period + 1):
        if period * min_repeats > n:
            break
        unit = units[n - period :]
        start = n - period
        while start - period >= 0 and units[start - period : start] == unit:
            start -= period
        if (n - start) // period >= min_repeats:
            return start, period
    return None


def find_repetition(text: str, ngram: int = 8, threshold: int = 4) -> bool:
    """True when the text looks degenerate: a repeated n-gram or a looping tail (see module docstring)."""
    if threshold <= 1 or not text.strip():
        return False
    units, sep = _units(text)
    n = ngram if sep else ngram * 2  # character n-grams carry less than word n-grams
    if len(units) >= n * threshold:
        grams = Counter(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
        if grams and max(grams.values()) >= threshold:
            return True
    # a short unit looping at the end; require more copies for single characters (e.g. "......" leaders)
    loop = tail_loop(units, threshold)
    if loop is None:
        return False
    start, period = loop
    repeats = (len(units) - start) // period
    return repeats >= (threshold * 4 if period == 1 else threshold)


def trim_tail_loop(text: str, threshold: int = 4) -> tuple[str, bool]:
    """Keep one copy of a looping tail (>= threshold repeats); returns (text, trimmed?)."""
    units, sep = _units(text)
    loop = tail_loop(units, threshold)
    if loop is None:
        return text, False
    start, period = loop
    if period == 1 and (len(units) - start) < threshold * 4:
        return text, False
    return sep.join(units[: start + period]), True


def retry_generation(base: GenerationConfig, attempt: int, *, repetition: bool) -> GenerationConfig:
    """Decoding settings for retry ``attempt`` (1-based): sampling at rising temperature; on repetition also
    forbid repeated n-grams and add a mild repetition penalty."""
    temperature = RETRY_TEMPERATURES[min(attempt, len(RETRY_TEMPERATURES)) - 1]
    changes: dict[str, object] = {"do_sample": True, "temperature": temperature, "num_beams": 1}
    if repetition:
        changes["no_repeat_ngram_size"] = max(base.no_repeat_ngram_size, base.repetition_ngram)
        changes["repetition_penalty"] = max(base.repetition_penalty, 1.05)
    return dataclasses.replace(base, **changes)
