"""SampleStream: a re-iterable, shardable, optionally shuffled view of ``open_sources`` (one pass = one epoch)."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

from deepsynth.data.filters import SampleFilter
from deepsynth.data.images import DEFAULT_MAX_PIXELS
from deepsynth.data.open import open_sources
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample


class SampleStream:
    """Iterate the same sources once per epoch in constant memory.

    ``shuffle_buffer`` > 0 shuffles within a sliding buffer seeded by (seed, epoch). ``num_shards``/``shard_index``
    keep every n-th sample (e.g. one per rank); inside a torch DataLoader worker the worker's share is taken on
    top of that automatically. ``last_report`` holds the DataReport of the latest pass.
    """

    def __init__(
        self,
        specs: list[str] | str,
        *,
        filter: SampleFilter | None = None,
        decode: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        shuffle_buffer: int = 0,
        seed: int = 0,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
        self.specs = [specs] if isinstance(specs, str) else list(specs)
        self.filter = filter
        self.decode = decode
        self.max_pixels = max_pixels
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.num_shards = num_shards
        self.shard_index = shard_index
        self.epoch = 0
        self.last_report: DataReport | None = None
        open_sources(self.specs)  # fail now on a missing source, not at the first epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _share(self) -> tuple[int, int]:
        n, i = self.num_shards, self.shard_index
        if "torch" in sys.modules:  # only look when torch is already in use
            info = sys.modules["torch"].utils.data.get_worker_info()
            if info is not None:
                n, i = n * info.num_workers, i * info.num_workers + info.id
        return n, i

    def __iter__(self) -> Iterator[Sample]:
        self.last_report = report = DataReport()
        # filtering and validation run before sharding, so every shard sees the same valid sequence
        stream = open_sources(
            self.specs, filter=self.filter, report=report, decode=False, max_pixels=self.max_pixels
        )
        n, i = self._share()
        mine = (s for k, s in enumerate(stream) if k % n == i)
        if self.shuffle_buffer > 0:
            mine = _shuffled(mine, self.shuffle_buffer, random.Random(f"{self.seed}:{self.epoch}"))
        for s in mine:
            if self.decode:
                try:
                    _ = s.image
                except ValueError as exc:  # SampleError
                    report.skip(s.id, str(getattr(exc, "reason", exc)), str(s.meta.get("origin", "")),
                                getattr(exc, "kind", None))  # fmt: skip
                    continue
            yield s


def _shuffled(items: Iterator[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    buf: list[Sample] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf
