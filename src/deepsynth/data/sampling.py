"""Seeded sampling stratified by subset (``deepsynth eval --sample N --seed S``): N rows spread over every
subset in proportion to its size, instead of the first N rows of the first document."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable

from deepsynth.data.sample import Sample


def quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many rows each group gives: ``n`` split in proportion to group sizes (largest remainders), at least
    one per group when ``n`` is at least the number of groups, never more than a group has."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    ideal = {g: n * size / total for g, size in sizes.items()}
    floor = 1 if n >= len(sizes) else 0
    out = {g: max(floor, int(x)) for g, x in ideal.items()}
    while sum(out.values()) < n:  # most under-served group first
        g = max((g for g in out if out[g] < sizes[g]), key=lambda g: (ideal[g] - out[g], g))
        out[g] += 1
    while sum(out.values()) > n:  # the minimum of one made too many: take from the most over-served
        g = min((g for g in out if out[g] > floor), key=lambda g: (ideal[g] - out[g], g))
        out[g] -= 1
    return out


def stratified_sample(samples: Iterable[Sample], n: int, seed: int, key: str = "subset") -> list[Sample]:
    """``n`` samples drawn with ``random.Random(seed)`` per group of ``key`` (see :func:`quotas`), returned in
    their original order. Holds the rows' metadata (not their images) in memory."""
    if n < 1:
        raise ValueError(f"--sample must be at least 1, got {n}")
    rows = list(samples)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(rows):
        value = s.subset if key == "subset" else s.meta.get(key)
        groups[str(value)].append(i)
    take = quotas({g: len(ix) for g, ix in groups.items()}, n)
    chosen: list[int] = []
    for g in sorted(groups):
        chosen += random.Random(f"{seed}:{g}").sample(groups[g], take[g])
    return [rows[i] for i in sorted(chosen)]
