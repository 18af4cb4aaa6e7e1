"""The one repetition detector for generated text (the server's guard, the report's repetition rate).

Generative OCR models sometimes loop ("the the the ...") or run into the token limit without an end token.
:func:`find_repetition` flags a text in which one n-gram occurs ``threshold`` times or more, or whose tail is
one short unit repeated ``threshold`` times or more (a single repeated unit needs ``4 * threshold`` copies).
Runs of one punctuation mark, spaced or not (dot leaders ``Total ........ 42``, rules ``-----``, form blanks
``____``), are document content, not a decoding loop: they count as three marks before any test.
:func:`trim_tail_loop` keeps one copy of a looping tail.
"""

from __future__ import annotations

import re
from collections import Counter

_LEADER_RUN = re.compile(r"([^\w\s]|_)(?:[ \t]?\1){3,}")  # one mark (or "_") four times or more


def _units(text: str) -> tuple[list[str], str]:
    """Words when the text has spaces, else characters (CJK, or a run of one symbol)."""
    words = text.split()
    if len(words) >= 4:
        return words, " "
    return list(text.replace(" ", "")), ""


def collapse_leaders(text: str) -> str:
    """Runs of one punctuation mark (``.....``, ``. . . .``, ``-----``) shortened to three marks."""
    return _LEADER_RUN.sub(r"\1\1\1", text)


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


def _loop_repeats(units: list[str], threshold: int) -> tuple[int, int] | None:
    """A tail loop with enough copies to count: (start, period), or None."""
    loop = tail_loop(units, threshold)
    if loop is None:
        return None
    start, period = loop
    repeats = (len(units) - start) // period
    return loop if repeats >= (threshold * 4 if period == 1 else threshold) else None


def find_repetition(text: str, ngram: int = 8, threshold: int = 4) -> bool:
    """True when the text looks degenerate: a repeated n-gram or a looping tail (see module docstring)."""
    text = collapse_leaders(text)
    if threshold <= 1 or not text.strip():
        return False
    units, sep = _units(text)
    n = ngram if sep else ngram * 2  # character n-grams carry less than word n-grams
    if len(units) >= n * threshold:
        grams = Counter(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
        if grams and max(grams.values()) >= threshold:
            return True
    return _loop_repeats(units, threshold) is not None


def has_repetition(hyp: str, ref: str | None = None, *, n: int = 8, threshold: int = 4) -> bool:
    """:func:`find_repetition` of ``hyp``, except when the reference ``ref`` itself repeats (quoted refrains)."""
    if not find_repetition(hyp, n, threshold):
        return False
    return ref is None or not find_repetition(ref, n, threshold)


def trim_tail_loop(text: str, threshold: int = 4) -> tuple[str, bool]:
    """Keep one copy of a looping tail (leader runs are never trimmed); returns (text, trimmed?)."""
    units, sep = _units(text)
    loop = _loop_repeats(units, threshold)
    if loop is None or not find_repetition(text, threshold=threshold):
        return text, False
    start, period = loop
    return sep.join(units[: start + period]), True
