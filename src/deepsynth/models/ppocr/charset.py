"""The recogniser's output classes: CTC blank (class 0) + one class per character.

The shipped PP-OCRv6 list (18,708 characters, ONNX metadata key ``character``) is followed by ASCII space,
exactly as rapidocr's ``CTCLabelDecode`` builds it, so class ``i`` (``i >= 1``) is ``chars[i - 1]``.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

CHARSET_FILE = "charset.json"
ONNX_CHARSET_KEY = "deepsynth_charset"  # exact class list (JSON) in an exported ONNX file's metadata

# Characters without a Unicode decomposition whose glyph is closest to a letter already in the list.
_BASE_LETTER = {
    "ꝛ": "r",
    "ı": "i",
    "ȷ": "j",
    "¬": "-",
    "⸗": "-",
    "„": '"',
    "‟": '"',
    "ͤ": "e",  # COMBINING LATIN SMALL LETTER E (U+0364), superscript e of Fraktur umlauts
    "ͣ": "a",
    "ͦ": "o",
    "ͧ": "u",
}


_EAST_ASIAN = ("CJK", "HANGUL", "HIRAGANA", "KATAKANA", "BOPOMOFO", "IDEOGRAPHIC", "KANGXI", "YI ", "FULLWIDTH",
               "HALFWIDTH")  # fmt: skip


def is_cjk_or_emoji(ch: str) -> bool:
    """True for CJK, Hangul, Kana, Bopomofo, Yi and full/half-width characters (by Unicode name) and for emoji
    and other pictographs (U+1F000 and above)."""
    return ord(ch) >= 0x1F000 or unicodedata.name(ch, "").startswith(_EAST_ASIAN)


def normalize_text(text: str) -> str:
    """What the recogniser is trained to output: NFC, whitespace collapsed to single spaces, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


class Charset:
    """Maps characters ⇄ CTC classes (blank = 0)."""

    def __init__(self, chars: Sequence[str]):
        self.chars: list[str] = list(chars)
        self.index: dict[str, int] = {}
        for i, ch in enumerate(self.chars, start=1):
            self.index.setdefault(ch, i)  # first occurrence wins, like a dict built left to right

    @property
    def num_classes(self) -> int:
        return len(self.chars) + 1

    def __contains__(self, ch: str) -> bool:
        return ch in self.index

    def missing(self, texts: Iterable[str]) -> list[str]:
        """Characters of ``texts`` (normalised) that have no class, in first-seen order."""
        seen: dict[str, None] = {}
        for text in texts:
            for ch in normalize_text(text):
                if ch not in self.index and ch not in seen:
                    seen[ch] = None
        return list(seen)

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """Class ids of the normalised text, and the characters that were dropped (no class)."""
        ids: list[int] = []
        dropped: list[str] = []
        for ch in normalize_text(text):
            i = self.index.get(ch)
            if i is None:
                dropped.append(ch)
            else:
                ids.append(i)
        return ids, dropped

    def decode_greedy(self, probs: np.ndarray) -> list[tuple[str, float]]:
        """Greedy CTC on ``[batch, time, classes]`` probabilities: (text, mean max prob of emitted frames).

        Same rule as rapidocr's CTCLabelDecode: collapse repeats, drop blanks; confidence 0 for empty text.
        """
        out: list[tuple[str, float]] = []
        for chars in self.emitted(probs):
            text = "".join(ch for ch, _ in chars)
            conf = float(np.mean([p for _, p in chars])) if chars else 0.0
            out.append((text, conf))
        return out

    def emitted(self, probs: np.ndarray) -> list[list[tuple[str, float]]]:
        """Greedy CTC per row: each emitted character with the probability of the frame that emitted it."""
        idx = probs.argmax(axis=2)
        top = probs.max(axis=2)
        out = []
        for row_idx, row_top in zip(idx, top, strict=True):
            keep = np.ones(len(row_idx), dtype=bool)
            keep[1:] = row_idx[1:] != row_idx[:-1]
            keep &= row_idx != 0
            out.append(
                [(self.chars[i - 1], float(p)) for i, p in zip(row_idx[keep], row_top[keep], strict=True)]
            )
        return out

    def without_cjk_or_emoji(self, texts: Iterable[str]) -> list[int]:
        """Classes to keep when ``texts`` use no CJK/emoji character: blank + every other class, in order.

        Empty when they do (then every class is kept).
        """
        if any(is_cjk_or_emoji(ch) for text in texts for ch in text):
            return []
        return [0] + [i for i, ch in enumerate(self.chars, start=1) if not is_cjk_or_emoji(ch)]

    def base_class(self, ch: str) -> int | None:
        """The class of a similar existing character (to initialise a new class from), or None."""
        candidates = [_BASE_LETTER.get(ch, "")]
        decomposed = unicodedata.normalize("NFKD", ch)
        candidates += [
            decomposed,
            decomposed[:1],
            "".join(c for c in decomposed if not unicodedata.combining(c)),
        ]
        candidates.append(ch.lower())
        for cand in candidates:
            if cand and cand != ch and cand in self.index:
                return self.index[cand]
        return None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CHARSET_FILE
        path.write_text(json.dumps({"blank": 0, "chars": self.chars}, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Charset:
        path = Path(directory) / CHARSET_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a DeepSynth PP-OCR model directory")
        return cls(json.loads(path.read_text(encoding="utf-8"))["chars"])

    @classmethod
    def from_onnx_metadata(cls, character_meta: str) -> Charset:
        """The shipped list: metadata split like rapidocr does (``splitlines``), then ASCII space appended."""
        return cls([*character_meta.splitlines(), " "])
