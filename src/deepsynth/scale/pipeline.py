"""The one Ray Data pipeline behind every ``--ray`` command.

    driver: read inputs lazily into numbered shards (Arrow tables), a window of shards at a time
      → read tasks: decode                 CPU tasks: files → pages / samples → pixels, bad input → error row
      → map_batches(Worker, ActorPool)      one engine per actor, the library's own recognise/score code
      → driver: group rows by shard → ShardStore (completion manifest) → records

Rows carry ``shard`` and ``unit`` (the record's position in its shard); a unit may have several ``part`` rows
(the pages of a PDF). The driver keeps the first copy of every (shard, unit, part), so a batch that Ray runs
again after a worker died can never duplicate a record; a shard is written only once all its units are
complete, and a job that ends with an incomplete shard fails (its shard is done again on the next run).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from deepsynth.scale.metrics import WorkerStats
from deepsynth.scale.runtime import RayOptions
from deepsynth.scale.shards import ShardStore

Assemble = Callable[[list[dict[str, Any]]], tuple[dict[str, Any], str | None]]


@dataclass
class JobStats:
    """What a ``--ray`` run did, for the final summary."""

    units: int = 0
    resumed: int = 0
    new: int = 0
    pages: int = 0
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    dashboard: str | None = None
    workers: dict[str, WorkerStats] = field(default_factory=dict)  # by worker label (engine actors only)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.units,
            "resumed": self.resumed,
            "new": self.new,
            "pages": self.pages,
            "failed": sum(self.failures.values()),
            "failures_by_kind": dict(self.failures),
            "seconds": round(self.seconds, 3),
            "pages_per_second": round(self.pages / self.seconds, 3) if self.seconds else None,
            "workers": {name: w.to_dict() for name, w in sorted(self.workers.items())},
        }

    def summary(self) -> str:
        """One human line: counts, pages/s, failures by kind."""
        rate = f"{self.pages / self.seconds:.2f} pages/s" if self.seconds and self.pages else "no new pages"
        return (f"{self.new} new, {self.resumed} resumed of {self.units}; {self.pages} pages in "
                f"{self.seconds:.1f} s ({rate})" + _failed(self.failures))  # fmt: skip

    def worker_lines(self, most: int = 16) -> list[str]:
        """One human line per engine actor (pages, busy seconds, failures by kind); past ``most`` actors (a new
        pool starts for each window of shards) one line for them all, with pages per actor min-median-max."""
        if len(self.workers) > most:
            pages = sorted(w.pages for w in self.workers.values())
            busy = sum(w.seconds for w in self.workers.values())
            failures = sum((w.failures for w in self.workers.values()), Counter())
            return [f"{len(pages)} engine actors: {sum(pages)} pages in {busy:.1f} busy s; pages per actor "
                    f"{pages[0]}-{pages[len(pages) // 2]}-{pages[-1]} (min-median-max)" + _failed(failures)]  # fmt: skip
        return [f"worker {name}: {w.pages} pages in {w.seconds:.1f} s" + _failed(w.failures)
                for name, w in sorted(self.workers.items())]  # fmt: skip


def _failed(failures: Counter[str]) -> str:
    """``"; failed: kind n, ..."`` (most common first), or nothing when there are none."""
    return "; failed: " + ", ".join(f"{k} {v}" for k, v in failures.most_common()) if failures else ""


def shard_tables(rows: Iterable[dict[str, Any]], shard_size: int, schema: Any) -> Iterator[tuple[int, Any]]:
    """Cut a stream of input rows into ``(index, pyarrow.Table)`` shards, adding ``shard`` and ``unit``."""
    import pyarrow as pa

    batch: list[dict[str, Any]] = []
    index = 0
    for row in rows:
        batch.append({"shard": index, "unit": len(batch), **row})
        if len(batch) == shard_size:
            yield index, pa.Table.from_pylist(batch, schema=schema)
            batch, index = [], index + 1
    if batch:
        yield index, pa.Table.from_pylist(batch, schema=schema)


def _todo(shards: Iterable[tuple[int, Any]], store: ShardStore, stats: JobStats) -> Iterator[tuple[int, Any]]:
    """The shards not yet in ``store``, counting every shard's records into ``stats`` as they pass."""
    for index, table in shards:
        stats.units += table.num_rows
        if index in store.done:
            stats.resumed += store.done[index]
        else:
            yield index, table


@dataclass
class Stages:
    """What a ``--ray`` job does to each shard.

    ``decode(batch, **decode_kwargs)`` runs in CPU tasks on ``RayOptions.batch_size`` rows at a time;
    ``worker(**worker_kwargs)`` is the engine actor class (None: the decoded rows are the results), running
    ``worker_calls`` batches at once (see ``RayOptions.actor_args``); ``assemble(parts)`` turns a unit's result
    rows (sorted by part) into its record and a failure kind (None when it succeeded), on the driver."""

    decode: Callable[..., Any]
    decode_kwargs: dict[str, Any]
    assemble: Assemble
    worker: type | None = None
    worker_kwargs: dict[str, Any] = field(default_factory=dict)
    worker_calls: int = 1


def shard_dataset(tables: list[Any], stages: Stages, opts: RayOptions) -> Any:
    """A Ray Data dataset of the decoded shards: one read task per shard table, decoding it a batch at a time.

    Decoding in the read task (not in a ``map_batches`` after it) runs one task per shard instead of two.
    ``from_arrow_refs`` would start one metadata task per table (~50 KB of driver memory each, measured);
    a read task costs about a quarter of that."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    decode, kwargs, size = stages.decode, stages.decode_kwargs, opts.batch_size  # what the tasks carry

    def decoded(table: Any) -> Iterator[Any]:
        for start in range(0, table.num_rows, size):
            yield decode(table.slice(start, size), **kwargs)

    class ShardTables(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None  # unknown: Ray Data never splits a shard's block

        def get_read_tasks(self, parallelism: int, **_: Any) -> list[ReadTask]:
            return [ReadTask(lambda t=t: decoded(t), BlockMetadata(num_rows=t.num_rows, size_bytes=t.nbytes,
                                                                   input_files=None, exec_stats=None))
                    for t in tables]  # fmt: skip

    return ray.data.read_datasource(ShardTables(), override_num_blocks=len(tables), num_cpus=opts.decode_cpus)


def run_sharded(
    shards: Iterable[tuple[int, Any]],
    store: ShardStore,
    stages: Stages,
    opts: RayOptions,
    *,
    on_shard: Callable[[int, list[dict[str, Any]]], None] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> JobStats:
    """Run every shard not yet in ``store`` through ``stages``, writing finished shards.

    ``shards`` yields ``(index, pyarrow.Table)`` with ``shard`` and ``unit`` columns; it is read lazily, a
    window of ``opts.window`` shards at a time, each window one Ray Data run (so the driver holds one
    window, whatever the number of records; the actor pool starts again for each window).
    ``on_shard(index, records)`` runs after a shard is written (side outputs, tests).
    ``total``: records still to do, for the progress bar.
    """
    import ray.data
    from tqdm import tqdm

    stats = JobStats()
    t0 = time.perf_counter()
    # one progress bar (records, below); Ray's per-operator bars are in its dashboard
    ray.data.DataContext.get_current().enable_progress_bars = False
    todo = _todo(shards, store, stats)
    with tqdm(total=total, disable=not progress, unit="record", desc="ray") as bar:
        while window := list(itertools.islice(todo, opts.window)):
            _run_window(window, store, stats, bar, stages, opts, on_shard)
    stats.seconds = time.perf_counter() - t0
    return stats


def _run_window(
    window: list[tuple[int, Any]],
    store: ShardStore,
    stats: JobStats,
    bar: Any,
    stages: Stages,
    opts: RayOptions,
    on_shard: Callable[[int, list[dict[str, Any]]], None] | None,
) -> None:
    """One Ray Data run over a window of shards; every shard of it is written, or this raises."""
    expected = {index: table.num_rows for index, table in window}
    ds = shard_dataset([table for _, table in window], stages, opts)
    del window  # the read tasks hold the tables now
    if stages.worker is not None:  # jobs without a model (data prepare) stop after the CPU tasks
        with warnings.catch_warnings():  # max_restarts/max_task_retries: see RayOptions.actor_args
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ds.map_batches(stages.worker, fn_constructor_kwargs=stages.worker_kwargs, batch_format="pyarrow",
                                **opts.actor_args(stages.worker_calls))  # fmt: skip

    pending: dict[int, dict[int, dict[int, dict[str, Any]]]] = {k: {} for k in expected}
    complete: Counter[int] = Counter()
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            shard, unit, part = row["shard"], row["unit"], row["part"]
            if shard not in pending:
                continue  # a late copy of a shard already written
            parts = pending[shard].setdefault(unit, {})
            if part in parts:
                continue  # a batch Ray ran twice (worker restarted): keep the first copy
            parts[part] = row
            if row.get("worker") is not None:  # an engine actor's row (see deepsynth.scale.metrics)
                stats.workers.setdefault(row["worker"], WorkerStats()).add(row)
            if len(parts) < row["n_parts"]:
                continue
            complete[shard] += 1
            bar.update(1)
            if complete[shard] == expected[shard]:
                units = pending.pop(shard)
                records = []
                for u in range(expected[shard]):
                    rows = [units[u][p] for p in sorted(units[u])]
                    record, failure = stages.assemble(rows)
                    records.append(record)
                    stats.pages += len(rows) if failure is None else 0
                    if failure is not None:
                        stats.failures[failure] += 1
                store.write(shard, records)
                stats.new += len(records)
                if on_shard is not None:
                    on_shard(shard, records)
    # Ray Data's dataset and executor objects hold the window's object refs in reference cycles: collect them
    # now, or the driver keeps finished windows until Python's cycle collector runs (measured: +1.5 MB a window)
    del ds
    gc.collect()
    _give_back_freed_heap()
    if pending:
        missing = sorted(pending)
        raise RuntimeError(f"Ray job ended with {len(missing)} incomplete shard(s) (first: {missing[0]}); "
                           "rerun the same command to finish them")  # fmt: skip


def _give_back_freed_heap() -> None:
    """Return the heap glibc keeps after a window's objects are freed (``malloc_trim``; a no-op elsewhere):
    without it the driver's RSS crept up ~1 MB a window (measured over 8 windows of 2,048 files: 7.8 MB of
    growth, 3.8 MB with it)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl)
            ctypes.CDLL("libc.so.6").malloc_trim(0)
