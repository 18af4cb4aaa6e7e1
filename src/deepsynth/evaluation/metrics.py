"""OCR metrics on rapidfuzz's C++ edit distance, with jiwer 4.x corpus semantics.

Tokenisation is exactly jiwer 4's default:

* characters (CER): leading/trailing whitespace stripped, then every code point is a unit (no Unicode
  normalisation: pick a profile from :mod:`deepsynth.evaluation.normalize` first);
* words (WER): runs of 2+ whitespace characters become one space, the text is stripped and split on ``" "``.

Corpus rates are micro-averages, ``(S + D + I) / (S + D + H)`` = total edit distance / total reference units,
unbounded above. With **zero reference units in the whole corpus** the rate is the number of inserted units
(jiwer 4's rule): ``0.0`` when the hypotheses are empty too, otherwise the hypothesis unit count.
Per-sample CER follows the same rule and can be clipped at 1.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from deepsynth.models.repetition import has_repetition

_MULTI_WS = re.compile(r"\s\s+")
_distance = Levenshtein.distance


def char_units(text: str) -> str:
    """The character sequence CER compares (jiwer ``cer_default``: strip)."""
    return text.strip()


def word_units(text: str) -> list[str]:
    """The word sequence WER compares (jiwer ``wer_default``: collapse 2+ whitespace, strip, split on space)."""
    if text.isprintable():  # no whitespace but " ": jiwer's tokenisation is exactly str.split()
        return text.split()
    return [w for w in _MULTI_WS.sub(" ", text).strip().split(" ") if w]


def _pairs(refs: str | Sequence[str], hyps: str | Sequence[str]) -> tuple[Sequence[str], Sequence[str]]:
    if isinstance(refs, str):
        refs = [refs]
    if isinstance(hyps, str):
        hyps = [hyps]
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses; they must pair up")
    return refs, hyps


def _type_error(refs: Sequence[object], hyps: Sequence[object]) -> TypeError | None:
    """The TypeError naming the first non-str input (checked only after a failure, to keep loops lean)."""
    for kind, seq in (("reference", refs), ("hypothesis", hyps)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                return TypeError(f"{kind} #{i} is {type(s).__name__}, expected str")
    return None


def rate(errors: int, ref_units: int, hyp_units: int) -> float:
    """Error rate with jiwer 4's empty-reference rule (no reference units → count of inserted units)."""
    if ref_units == 0:
        return float(hyp_units)
    return errors / ref_units


def char_counts(refs: str | Sequence[str], hyps: str | Sequence[str]) -> tuple[int, int, int]:
    """(edit distance, reference chars, hypothesis chars) summed over the corpus."""
    refs, hyps = _pairs(refs, hyps)
    errors = n_ref = n_hyp = 0
    try:
        for r, h in zip(refs, hyps, strict=True):
            r = r.strip()
            h = h.strip()
            errors += _distance(r, h)
            n_ref += len(r)
            n_hyp += len(h)
    except (AttributeError, TypeError) as exc:
        raise (_type_error(refs, hyps) or exc) from None
    return errors, n_ref, n_hyp


def word_counts(refs: str | Sequence[str], hyps: str | Sequence[str]) -> tuple[int, int, int]:
    """(word edit distance, reference words, hypothesis words) summed over the corpus."""
    refs, hyps = _pairs(refs, hyps)
    errors = n_ref = n_hyp = 0
    try:
        for r, h in zip(refs, hyps, strict=True):
            rw = r.split() if r.isprintable() else word_units(r)
            hw = h.split() if h.isprintable() else word_units(h)
            errors += _distance(rw, hw)
            n_ref += len(rw)
            n_hyp += len(hw)
    except (AttributeError, TypeError) as exc:
        raise (_type_error(refs, hyps) or exc) from None
    return errors, n_ref, n_hyp


def cer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Corpus character error rate, identical to ``jiwer.cer`` (4.x) on the same inputs."""
    return rate(*char_counts(refs, hyps))


def wer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Corpus word error rate, identical to ``jiwer.wer`` (4.x) on the same inputs."""
    return rate(*word_counts(refs, hyps))


def sample_cer(ref: str, hyp: str, *, clip: bool = False) -> float:
    """CER of one line; ``clip=True`` caps it at 1.0 (empty reference + non-empty hypothesis → 1.0)."""
    value = cer(ref, hyp)
    return min(value, 1.0) if clip else value


def ned(ref: str, hyp: str) -> float:
    """Normalised edit distance in [0, 1]: Levenshtein / max(len) (OmniDocBench; PaddleOCR reports 1 - this).

    Both empty → 0.0. Uses the same stripped character units as CER.
    """
    r, h = ref.strip(), hyp.strip()
    longest = max(len(r), len(h))
    return _distance(r, h) / longest if longest else 0.0


def exact_match(ref: str, hyp: str) -> bool:
    """Whole-line match after stripping outer whitespace."""
    return ref.strip() == hyp.strip()


def char_edit_pairs(ref: str, hyp: str) -> list[tuple[str, str]]:
    """(reference char, hypothesis char) for every edit; '' marks the empty side of an insertion/deletion."""
    r, h = ref.strip(), hyp.strip()
    pairs = []
    for op, i, j in Levenshtein.editops(r, h):
        if op == "replace":
            pairs.append((r[i], h[j]))
        elif op == "delete":
            pairs.append((r[i], ""))
        else:
            pairs.append(("", h[j]))
    return pairs


_SUMMARY_KEYS = (
    "cer", "wer", "ned", "exact_match", "repetition_rate", "truncation_rate", "mean_sample_cer_clipped",
    "chars", "char_errors", "words", "word_errors",
)  # fmt: skip
GROUP_KEYS = ("language", "subset", "doc_type")  # per-group breakdowns: summary()["per_<key>"]
_FIELDS = ("c_err", "c_ref", "c_hyp", "w_err", "w_ref", "w_hyp", "exact", "repeat", "finished")


def rate_columns(a: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every rate of a summary as (per-sample numerator, per-sample denominator) over ``OCRMetrics.arrays()``:
    each is a ratio of sums, so one bootstrap (evaluation.bootstrap) gives all their CIs and paired deltas."""
    ones = np.ones(len(a["ned"]), dtype=np.int64)
    c_ref, c_hyp = a["c_ref"], a["c_hyp"]
    per_cer = np.where(c_ref > 0, a["c_err"] / np.maximum(c_ref, 1), c_hyp.astype(np.float64))
    return {
        "cer": (a["c_err"], c_ref),
        "wer": (a["w_err"], a["w_ref"]),
        "ned": (a["ned"], ones),
        "exact_match": (a["exact"], ones),
        "repetition_rate": (a["repeat"], ones),
        "truncation_rate": ((a["finished"] == 0).astype(np.int64), (a["finished"] >= 0).astype(np.int64)),
        "mean_sample_cer_clipped": (np.minimum(per_cer, 1.0), ones),
    }


class OCRMetrics:
    """Streaming OCR metrics: ``update`` per line/page, ``summary`` at any time, ``reset`` to start over.

    Keeps a few integers per sample (not the texts), so it scales to millions of lines and supports
    bootstrap confidence intervals and per-language / per-subset / per-document-type breakdowns.

    ``normalize``: a profile name or callable applied to both sides before scoring (default: none).
    """

    def __init__(
        self,
        normalize: str | Callable[[str], str] | None = None,
        *,
        repetition_ngram: int = 8,
        repetition_threshold: int = 4,
        top_confusions: int = 20,
    ) -> None:
        if isinstance(normalize, str):
            from deepsynth.evaluation.normalize import get_normalizer

            self.profile = normalize
            self._norm: Callable[[str], str] | None = get_normalizer(normalize)
        else:
            self.profile = "none" if normalize is None else getattr(normalize, "profile", "custom")
            self._norm = normalize
        self.repetition_ngram = repetition_ngram
        self.repetition_threshold = repetition_threshold
        self.top_k = top_confusions
        self.reset()

    def reset(self) -> None:
        # compact per-sample columns (~90 bytes/sample): int64 counts, float ned, interned group codes
        self._cols: dict[str, array[int]] = {k: array("q") for k in _FIELDS}
        self._ned: array[float] = array("d")
        self._codes: dict[str, dict[str | None, int]] = {k: {} for k in GROUP_KEYS}
        self._group_cols: dict[str, array[int]] = {k: array("i") for k in GROUP_KEYS}
        self.ids: list[str | None] = []
        self.confusions: Counter[tuple[str, str]] = Counter()
        self.ops = Counter({"substitutions": 0, "deletions": 0, "insertions": 0})

    def __len__(self) -> int:
        return len(self._ned)

    def update(
        self,
        ref: str,
        hyp: str,
        *,
        language: str | None = None,
        subset: str | None = None,
        doc_type: str | None = None,
        finished: bool | None = None,
        sample_id: str | None = None,
    ) -> dict[str, Any]:
        """Score one sample; returns its per-sample metrics (cer, wer, ned, exact, repetition)."""
        if not isinstance(ref, str) or not isinstance(hyp, str):
            raise TypeError(
                f"sample {sample_id!r}: ref and hyp must be str, got "
                f"{type(ref).__name__} and {type(hyp).__name__}"
            )
        if self._norm is not None:
            ref, hyp = self._norm(ref), self._norm(hyp)
        c_err, c_ref, c_hyp = char_counts(ref, hyp)
        w_err, w_ref, w_hyp = word_counts(ref, hyp)
        pairs = char_edit_pairs(ref, hyp) if c_err else []
        for r_ch, h_ch in pairs:
            self.ops["substitutions" if r_ch and h_ch else "deletions" if r_ch else "insertions"] += 1
        self.confusions.update(pairs)
        row = {
            "c_err": c_err, "c_ref": c_ref, "c_hyp": c_hyp, "w_err": w_err, "w_ref": w_ref, "w_hyp": w_hyp,
            "exact": int(exact_match(ref, hyp)),
            "repeat": int(has_repetition(hyp, ref, n=self.repetition_ngram, threshold=self.repetition_threshold)),
            "finished": -1 if finished is None else int(bool(finished)),
        }  # fmt: skip
        for k in _FIELDS:
            self._cols[k].append(row[k])
        sample_ned = c_err / max(c_ref, c_hyp) if c_err else 0.0
        self._ned.append(sample_ned)
        for kind, value in zip(GROUP_KEYS, (language, subset, doc_type), strict=True):
            self._group_cols[kind].append(self._codes[kind].setdefault(value, len(self._codes[kind])))
        self.ids.append(sample_id)
        return {
            "cer": rate(c_err, c_ref, c_hyp), "wer": rate(w_err, w_ref, w_hyp), "ned": sample_ned,
            "exact": bool(row["exact"]), "repetition": bool(row["repeat"]), "ref_chars": c_ref,
            "char_errors": c_err,
        }  # fmt: skip

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-sample columns as numpy arrays (c_err, c_ref, c_hyp, w_err, ..., ned)."""
        out = {k: np.frombuffer(v, dtype=np.int64).copy() for k, v in self._cols.items()}
        out["ned"] = np.frombuffer(self._ned, dtype=np.float64).copy()
        return out

    @staticmethod
    def _aggregate(a: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, Any]:
        if mask is not None:
            a = {k: v[mask] for k, v in a.items()}
        n = int(len(a["ned"]))
        if n == 0:
            return dict.fromkeys(_SUMMARY_KEYS, None) | {"n": 0}
        known = a["finished"] >= 0
        c_ref, c_hyp = a["c_ref"], a["c_hyp"]
        per_cer = np.where(c_ref > 0, a["c_err"] / np.maximum(c_ref, 1), c_hyp.astype(np.float64))
        return {
            "n": n,
            "cer": rate(int(a["c_err"].sum()), int(c_ref.sum()), int(c_hyp.sum())),
            "wer": rate(int(a["w_err"].sum()), int(a["w_ref"].sum()), int(a["w_hyp"].sum())),
            "ned": float(a["ned"].mean()),
            "exact_match": float(a["exact"].mean()),
            "repetition_rate": float(a["repeat"].mean()),
            "truncation_rate": float((a["finished"][known] == 0).mean()) if known.any() else None,
            "mean_sample_cer_clipped": float(np.minimum(per_cer, 1.0).mean()),
            "chars": int(c_ref.sum()),
            "char_errors": int(a["c_err"].sum()),
            "words": int(a["w_ref"].sum()),
            "word_errors": int(a["w_err"].sum()),
        }

    def _groups(self, kind: str, a: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        names = self._codes[kind]
        if not names or list(names) == [None]:
            return {}
        col = np.frombuffer(self._group_cols[kind], dtype=np.int32)
        merged: dict[str, list[int]] = {}
        for name, code in names.items():
            merged.setdefault("unknown" if name is None else str(name), []).append(code)
        return {label: self._aggregate(a, np.isin(col, ids)) for label, ids in sorted(merged.items())}

    def summary(self, *, bootstrap: int = 0, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """All metrics as a JSON-ready dict; ``bootstrap=B`` adds a ``<rate>_ci`` for every rate from B resamples."""
        a = self.arrays()
        out = self._aggregate(a)
        out.update(
            normalize=self.profile,
            **{k: int(v) for k, v in self.ops.items()},
            **{f"per_{kind}": self._groups(kind, a) for kind in GROUP_KEYS},
            top_confusions=[[r, h, c] for (r, h), c in self.confusions.most_common(self.top_k)],
        )
        if bootstrap and len(self):
            from deepsynth.evaluation.bootstrap import bootstrap_rate_ci

            kw = {"n_resamples": bootstrap, "level": level, "seed": seed}
            for key, (num, den) in rate_columns(a).items():  # cer_ci, wer_ci, ned_ci, exact_match_ci, ...
                if den.sum() > 0:
                    out[f"{key}_ci"] = list(bootstrap_rate_ci(num, den, **kw))
            out["ci_level"] = level
        return out
