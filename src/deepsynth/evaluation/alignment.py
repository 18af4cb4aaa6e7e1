"""Alignment of a reference and a hypothesis into equal/substitute/insert/delete chunks, for reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rapidfuzz.distance import Levenshtein

from deepsynth.evaluation.metrics import char_edit_pairs, word_units

OpName = Literal["equal", "substitute", "insert", "delete"]


@dataclass(frozen=True)
class AlignOp:
    """One aligned chunk; positions are [start, end) indices into the unit sequences (chars or words)."""

    op: OpName
    ref_start: int
    ref_end: int
    hyp_start: int
    hyp_end: int
    ref: str
    hyp: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def align(ref: str, hyp: str, *, unit: Literal["char", "word"] = "char", equal: bool = True) -> list[AlignOp]:
    """Minimal-edit alignment (the same one the CER/WER counts come from).

    Characters are taken after stripping outer whitespace, words as WER tokenises them. ``equal=False`` keeps
    only the errors.
    """
    if unit == "char":
        r_units: Any = ref.strip()
        h_units: Any = hyp.strip()
        sep = ""
    elif unit == "word":
        r_units, h_units, sep = word_units(ref), word_units(hyp), " "
    else:
        raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
    ops = []
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(r_units, h_units):
        name: OpName = "substitute" if tag == "replace" else tag  # type: ignore[assignment]
        if name == "equal" and not equal:
            continue
        ops.append(AlignOp(name, i1, i2, j1, j2, sep.join(r_units[i1:i2]), sep.join(h_units[j1:j2])))
    return ops


def error_counts(ops: Iterable[AlignOp]) -> dict[str, int]:
    """Hits, substitutions, deletions and insertions in an alignment (units, not chunks)."""
    counts = {"hits": 0, "substitutions": 0, "deletions": 0, "insertions": 0}
    key = {"equal": "hits", "substitute": "substitutions", "delete": "deletions"}
    for op in ops:
        if op.op == "insert":
            counts["insertions"] += op.hyp_end - op.hyp_start
        else:
            counts[key[op.op]] += op.ref_end - op.ref_start
    return counts


def top_confusions(pairs: Iterable[tuple[str, str]], k: int = 20) -> list[tuple[str, str, int]]:
    """The ``k`` most frequent (reference char, hypothesis char) edits; '' is the empty side."""
    return [(r, h, c) for (r, h), c in Counter(pairs).most_common(k)]


def corpus_confusions(refs: Iterable[str], hyps: Iterable[str], k: int = 20) -> list[tuple[str, str, int]]:
    """Top character confusions over a corpus."""
    counter: Counter[tuple[str, str]] = Counter()
    for r, h in zip(refs, hyps, strict=True):
        counter.update(char_edit_pairs(r, h))
    return [(r, h, c) for (r, h), c in counter.most_common(k)]
