"""Shared inputs for the trainer tests: the narrowest real Fraktur lines of examples/ and a tiny PP-OCR model."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from deepsynth.data import Sample, open_sources

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "gt4histocr_dta19"


@lru_cache(maxsize=1)
def _narrowest_ids(n: int) -> tuple[str, ...]:
    rows = []
    for s in open_sources([str(EXAMPLES)]):
        w, h = s.image.size
        rows.append((w / h, s.id))
        s.release()
    return tuple(i for _, i in sorted(rows)[:n])


def real_lines(n: int = 16) -> list[Sample]:
    """The ``n`` narrowest real line crops (fast to train on), in a fixed order."""
    keep = set(_narrowest_ids(n))
    return sorted((s for s in open_sources([str(EXAMPLES)]) if s.id in keep), key=lambda s: s.id)


def tiny_adapter(samples: list[Sample], seed: int = 0):
    """A random-weight PP-OCRv6 recogniser (same architecture, tiny) whose charset covers ``samples``."""
    from deepsynth.models.ppocr.adapter import PPOCRAdapter

    chars = sorted({c for s in samples for c in s.text})
    return PPOCRAdapter.tiny_random("".join(chars), seed=seed)
