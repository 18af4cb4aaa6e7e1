"""SampleFilter: language/subset/doc type/level/flag filters and deterministic group-key splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from deepsynth.data.sample import Sample

SPLIT_NAMES = ("train", "val", "test")


def group_key(sample: Sample, split_key: str = "page_id") -> str:
    """The value that decides a sample's split: ``split_key`` from the sample, else its subset, else its id.

    A page row without ``page_id`` uses its own id, which is the ``page_id`` of its line rows, so a page
    and its lines always land in the same split.
    """
    if split_key in ("id", "subset", "language", "level"):
        value = getattr(sample, split_key)
    else:
        value = sample.meta.get(split_key)
        if value is None and split_key == "page_id" and sample.level == "page":
            value = sample.id
    if value is None or value == "":
        value = sample.subset or sample.id
    return str(value)


def split_of(key: str, seed: int = 0, ratios: tuple[float, ...] = (0.8, 0.1, 0.1)) -> str:
    """Deterministic split name for a group key: hash of (seed, key) mapped onto the cumulative ratios."""
    if len(ratios) != len(SPLIT_NAMES) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split_ratios must be 3 non-negative numbers (train, val, test), got {ratios}")
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64 * sum(ratios)
    acc = 0.0
    for name, r in zip(SPLIT_NAMES, ratios, strict=True):
        acc += r
        if u < acc:
            return name
    return SPLIT_NAMES[-1]


@dataclass
class SampleFilter:
    """Which samples to keep. Every criterion left as None keeps everything."""

    languages: list[str] | None = None
    subsets: list[str] | None = None
    doc_types: list[str] | None = None
    levels: list[str] | None = None
    exclude_flags: list[str] | None = None
    split: str | None = None
    split_key: str = "page_id"
    split_ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}, got {self.split!r}")
        self.split_ratios = tuple(float(r) for r in self.split_ratios)
        split_of("", 0, self.split_ratios)  # validates ratios early

    def accepts(self, sample: Sample) -> bool:
        """True if the sample passes every criterion (``limit`` is applied by :meth:`apply`)."""
        if self.languages is not None and sample.language not in self.languages:
            return False
        if self.subsets is not None and sample.subset not in self.subsets:
            return False
        if self.doc_types is not None and sample.doc_type not in self.doc_types:
            return False
        if self.levels is not None and sample.level not in self.levels:
            return False
        if self.exclude_flags and any(bool(sample.meta.get(f)) for f in self.exclude_flags):
            return False
        if self.split is not None:
            return split_of(group_key(sample, self.split_key), self.seed, self.split_ratios) == self.split
        return True

    def apply(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        n = 0
        for s in samples:
            if self.limit is not None and n >= self.limit:
                return
            if self.accepts(s):
                n += 1
                yield s
