"""Per-worker metrics of a ``--ray`` job: to Prometheus through Ray's metrics agent, and into the job summary.

Each engine actor counts every batch it reads with ``ray.util.metrics``, labelled by ``worker`` (the first 8
hex digits of its Ray actor id, which a restarted actor keeps) and ``command`` (``ocr`` or ``eval``). Ray's
metrics agent on each node serves them next to Ray's own metrics at the node's metrics export port
(``ray start --metrics-export-port=8080``; the agent comes with ``ray[default]``, as in Ray's cluster images:
without it the counters are recorded and dropped), prefixed ``ray_``:

    ray_deepsynth_worker_pages_total{worker, command}             pages read without failure
    ray_deepsynth_worker_failures_total{worker, command, kind}    pages that failed, by failure kind
    ray_deepsynth_worker_batch_seconds_{bucket,sum,count}{worker, command}   wall time per batch

These count work done, so a batch Ray runs again after an actor restart counts twice. The same counts also
travel with each result row (``worker``, ``worker_seconds``, ``failure``), and the driver adds up the rows it
keeps: ``JobStats.workers``, in the final summary and metrics.json, counts every page exactly once.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

WORKER_FIELDS = [("worker", pa.string()), ("worker_seconds", pa.float64()), ("failure", pa.string())]
PREFIX = "deepsynth_worker_"
SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


def worker_label() -> str:
    """This actor's label: the first 8 hex digits of its Ray actor id (``pid-N`` outside an actor)."""
    import ray

    actor = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    return actor[:8] if actor else f"pid-{os.getpid()}"


class WorkerMeter:
    """The Prometheus counters of one engine actor (create it in the actor's ``__init__``)."""

    def __init__(self, command: str):
        from ray.util.metrics import Counter as RayCounter
        from ray.util.metrics import Histogram

        self.worker = worker_label()
        tags = {"worker": self.worker, "command": command}
        self._pages = RayCounter(f"{PREFIX}pages", description="Pages a DeepSynth Ray worker read without "
                                 "failure.", tag_keys=("worker", "command"))  # fmt: skip
        self._failures = RayCounter(f"{PREFIX}failures", description="Pages a DeepSynth Ray worker could not "
                                    "read, by kind.", tag_keys=("worker", "command", "kind"))  # fmt: skip
        self._seconds = Histogram(f"{PREFIX}batch_seconds", description="Wall time of a DeepSynth Ray worker "
                                  "per batch.", boundaries=SECONDS_BUCKETS, tag_keys=("worker", "command"))  # fmt: skip
        for metric in (self._pages, self._failures, self._seconds):
            metric.set_default_tags(tags)

    def stamp(
        self, rows: Sequence[dict[str, Any]], failures: Sequence[str | None], seconds: float
    ) -> list[dict[str, Any]]:
        """Count one batch (``failures[i]``: the kind of row i's failure, None when it was read) and return
        its result rows with the ``WORKER_FIELDS`` columns."""
        read = sum(kind is None for kind in failures)
        if read:
            self._pages.inc(read)
        for kind, n in Counter(k for k in failures if k is not None).items():
            self._failures.inc(n, tags={"kind": kind})
        self._seconds.observe(seconds)
        share = seconds / len(rows) if rows else 0.0
        return [{**row, "worker": self.worker, "worker_seconds": share, "failure": kind}
                for row, kind in zip(rows, failures, strict=True)]  # fmt: skip


@dataclass
class WorkerStats:
    """What one worker did, from the result rows the driver kept."""

    pages: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.seconds += row["worker_seconds"] or 0.0
        if row["failure"] is None:
            self.pages += 1
        else:
            self.failures[row["failure"]] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"pages": self.pages, "failures_by_kind": dict(self.failures), "seconds": round(self.seconds, 3),
                "pages_per_second": round(self.pages / self.seconds, 3) if self.seconds else None}  # fmt: skip
