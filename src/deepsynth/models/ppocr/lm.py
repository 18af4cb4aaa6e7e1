"""Reading with a language model: a character n-gram fitted on the training texts and CTC prefix beam search.

Handwriting is where a recogniser alone confuses strokes (n/u, dropped letters, split words); the texts a
model was fine-tuned on say which readings are plausible. ``CharNGram`` is an interpolated Witten-Bell
character model (no vocabulary to build, no word boundaries needed, any script). ``LMDecoder`` reads a line
by prefix beam search over the frames' probabilities (Hannun et al., 2014), adding ``alpha`` × the LM's
log-probability and a bonus ``beta`` for each character. Written here because the maintained decoders score
words (pyctcdecode with KenLM) or need a C++ build (flashlight via torchaudio, KenLM's ``lmplz``).

The decoder is saved beside the weights (``lm_decoder.json``: the settings and the normalised training
texts the model is fitted from, so the directory holds those texts) and in an exported ONNX file's metadata.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from deepsynth.models.ppocr.charset import Charset, normalize_text

DECODER_FILE = "lm_decoder.json"
ONNX_DECODER_KEY = "deepsynth_lm_decoder"
BOS, EOS = "\x02", "\x03"
NEG = -1e30


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b <= NEG else a + math.log1p(math.exp(b - a))


class CharNGram:
    """Interpolated Witten-Bell character n-gram: P(c|h) = (C(h,c) + T(h)·P(c|h')) / (C(h) + T(h)),
    where T(h) is the number of distinct characters seen after h and h' is h without its first character;
    the base is uniform over ``vocab_size`` characters plus end of line."""

    def __init__(self, texts: Iterable[str], order: int = 6, vocab_size: int = 100):
        if order < 1:
            raise ValueError(f"lm.order must be >= 1, got {order}")
        self.order = order
        self.uniform = 1.0 / (vocab_size + 1)
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for text in texts:
            s = BOS * (order - 1) + text + EOS
            for i in range(order - 1, len(s)):
                for k in range(order):
                    counts[s[i - k : i]][s[i]] += 1
        self.counts = {h: dict(d) for h, d in counts.items()}
        self.totals = {h: sum(d.values()) for h, d in self.counts.items()}
        self._cache: dict[tuple[str, str], float] = {}

    def logp(self, history: str, ch: str) -> float:
        """log P(ch | the last order-1 characters of history), history padded with start-of-line marks."""
        h = (BOS * (self.order - 1) + history)[len(history) :] if self.order > 1 else ""
        key = (h, ch)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        p = self.uniform
        for k in range(self.order):
            seen = self.counts.get(h[len(h) - k :] if k else "")
            if not seen:
                break
            distinct, total = len(seen), self.totals[h[len(h) - k :] if k else ""]
            p = (seen.get(ch, 0) + distinct * p) / (total + distinct)
        self._cache[key] = value = math.log(p)
        return value


@dataclass
class LMDecoder:
    """Prefix beam search with a character LM; ``alpha`` 0 and ``beta`` 0 is plain beam search."""

    texts: list[str] = field(repr=False)
    order: int = 6
    alpha: float = 0.5
    beta: float = 1.0
    beam: int = 10
    min_prob: float = 1e-3  # classes below this probability in a frame are not extended

    @cached_property
    def lm(self) -> CharNGram:
        vocab = {ch for text in self.texts for ch in text}
        return CharNGram(self.texts, self.order, vocab_size=max(len(vocab), 1))

    @classmethod
    def fit(cls, texts: Iterable[str], **settings: Any) -> LMDecoder:
        """A decoder whose LM is fitted on ``texts`` (normalised as the recogniser's targets are)."""
        return cls([t for t in (normalize_text(x) for x in texts) if t], **settings)

    def with_weights(self, alpha: float, beta: float) -> LMDecoder:
        """The same fitted LM with other weights."""
        other = replace(self, alpha=alpha, beta=beta)
        other.__dict__["lm"] = self.lm  # cached_property: the copy shares the fitted counts
        return other

    def emitted(self, probs: np.ndarray, charset: Charset) -> list[tuple[str, float]]:
        """The line read from ``[frames, classes]`` probabilities: each character with the highest probability
        a frame gave it along the kept path (what greedy ``Charset.emitted`` gives per row)."""
        return self.read(*self.reduce(probs, charset))

    def reduce(self, probs: np.ndarray, charset: Charset) -> tuple[np.ndarray, list[str]]:
        """The columns beam search can use (blank, and classes above ``min_prob`` in some frame) and their
        characters ("" for blank): a few dozen of the thousands of classes, to keep validation lines cheaply."""
        cols = np.flatnonzero((probs > self.min_prob).any(axis=0))
        cols = np.concatenate([[0], cols[cols > 0]])
        return probs[:, cols], ["", *(charset.chars[c - 1] for c in cols[1:])]

    def read(self, probs: np.ndarray, labels: Sequence[str]) -> list[tuple[str, float]]:
        """Prefix beam search over ``[frames, columns]`` probabilities whose column j reads ``labels[j]``
        (column 0 is the blank)."""
        lm, alpha, beta = self.lm, self.alpha, self.beta
        # text -> [log p(ending in blank), log p(ending in a character), [(label, probability), ...] read]
        beams: dict[str, list[Any]] = {"": [0.0, NEG, []]}
        for frame in probs:
            log_blank = math.log(max(float(frame[0]), 1e-30))
            cands = [(labels[i], float(frame[i])) for i in np.flatnonzero(frame > self.min_prob) if i]
            if not cands:  # a blank frame (most of them): every prefix now ends in a blank
                beams = {
                    k: [_logaddexp(pb, pn) + log_blank, NEG, chars] for k, (pb, pn, chars) in beams.items()
                }
                continue
            nxt: dict[str, list[Any]] = {}
            for prefix, (pb, pn, chars) in beams.items():
                total = _logaddexp(pb, pn)
                entry = nxt.setdefault(prefix, [NEG, NEG, chars])
                entry[0] = _logaddexp(entry[0], total + log_blank)
                last = chars[-1][0] if chars else None
                for ch, p in cands:
                    lp = math.log(p)
                    if ch == last:  # the same character continues, or (after a blank) repeats
                        entry[1] = _logaddexp(entry[1], pn + lp)
                        entry[2] = [*chars[:-1], (ch, max(chars[-1][1], p))]
                        grown = pb + lp
                    else:
                        grown = total + lp
                    if grown <= NEG / 2:
                        continue
                    new = prefix + ch
                    target = nxt.get(new)
                    if target is None:
                        target = nxt[new] = [NEG, NEG, [*chars, (ch, p)]]
                    target[1] = _logaddexp(target[1], grown + alpha * lm.logp(prefix, ch) + beta)
            ranked = sorted(nxt.items(), key=lambda kv: -_logaddexp(kv[1][0], kv[1][1]))
            beams = dict(ranked[: self.beam])
        best = max(beams.items(), key=lambda kv: _logaddexp(kv[1][0], kv[1][1]) + alpha * lm.logp(kv[0], EOS))
        return list(best[1][2])

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, origin: str = "") -> LMDecoder:
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{origin or 'LM decoder'}: not a valid LM decoder ({exc})") from None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / DECODER_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path

    @staticmethod
    def remove(directory: str | Path) -> None:
        """Make the model in ``directory`` read greedily again."""
        (Path(directory) / DECODER_FILE).unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | Path) -> LMDecoder | None:
        """The decoder saved in a model directory, or None when it reads greedily."""
        path = Path(directory) / DECODER_FILE
        return cls.from_json(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else None
