"""``deepsynth data prepare --ray``: decode-check every image on Ray, then write exactly as in-process.

Decoding is the expensive part of ``prepare``. Ray CPU tasks run the data layer's own check
(:func:`~deepsynth.data.open.image_problem`: header pixel count, then a full decode) on every distinct image
the sources reference, and the answers go to a shard store (``OUT.ray-check/``, so a rerun after a crash only
checks what is left). Then the in-process :func:`~deepsynth.data.prepare.prepare` runs unchanged with those
answers in place of its decoding step: the same filters, duplicate rules, limit, report and writers, so the
kept and skipped sets and the report are the in-process ones by construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from deepsynth.data.filters import SampleFilter
from deepsynth.data.images import DEFAULT_MAX_PIXELS, ImageRef
from deepsynth.data.open import image_problem, open_user_sources
from deepsynth.data.prepare import prepare
from deepsynth.data.report import DataReport
from deepsynth.data.sample import Sample, SampleError
from deepsynth.scale.pipeline import JobStats, Stages, run_sharded, shard_tables
from deepsynth.scale.runtime import RayOptions, connect
from deepsynth.scale.shards import ShardStore

IMAGE_SCHEMA = pa.schema([("shard", pa.int64()), ("unit", pa.int64()), ("id", pa.string()), ("key", pa.string()),
                          ("image_path", pa.string()), ("image_bytes", pa.large_binary()),
                          ("max_pixels", pa.int64())])  # fmt: skip
RESULT_SCHEMA = pa.schema([("shard", pa.int64()), ("unit", pa.int64()), ("part", pa.int64()),
                           ("n_parts", pa.int64()), ("result", pa.string())])  # fmt: skip


def image_key(sample: Sample) -> str | None:
    """What identifies a sample's image: its file, or a digest of its bytes (None: not an ImageRef)."""
    ref = sample.image_loader
    if not isinstance(ref, ImageRef):
        return None
    if ref.path is not None:
        return f"path:{ref.path}"
    return "blake2b:" + hashlib.blake2b(ref.data or b"", digest_size=16).hexdigest()


def distinct_images(samples: Iterator[Sample]) -> Iterator[dict[str, Any]]:
    """One input row per distinct image of ``samples``."""
    seen: set[str] = set()
    for s in samples:
        key = image_key(s)
        if key is None or key in seen:
            continue
        seen.add(key)
        ref = s.image_loader
        yield {"id": s.id, "key": key, "max_pixels": ref.max_pixels,
               "image_path": None if ref.path is None else str(ref.path), "image_bytes": ref.data}  # fmt: skip


def check_images(batch: pa.Table, cwd: str) -> pa.Table:
    """Ray task: the data layer's image check on each row → ``{"key", "reason", "kind"}`` (no reason: good)."""
    out = []
    for r in batch.to_pylist():
        path = Path(cwd, r["image_path"]) if r["image_path"] else None
        ref = ImageRef(r["id"], path=path, data=None if path else r["image_bytes"] or b"",
                       max_pixels=r["max_pixels"])  # fmt: skip
        problem = image_problem(Sample(r["id"], "", image_loader=ref), True)
        result = {"key": r["key"]}
        if problem is not None:
            result.update(reason=problem.reason, kind=problem.kind)
        out.append(
            {"shard": r["shard"], "unit": r["unit"], "part": 0, "n_parts": 1, "result": json.dumps(result)}
        )
    return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


def _assemble(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    rec = json.loads(rows[0]["result"])
    return rec, rec.get("kind") if "reason" in rec else None


def checked_images(store: ShardStore) -> Callable[[Sample], SampleError | None]:
    """An ``image_check`` for ``prepare`` answering from the store (decoding locally what it lacks)."""
    ok: set[str] = set()
    bad: dict[str, tuple[str, str | None]] = {}
    for rec in store.records():
        if "reason" in rec:
            bad[rec["key"]] = (rec["reason"], rec.get("kind"))
        else:
            ok.add(rec["key"])

    def check(sample: Sample) -> SampleError | None:
        key = image_key(sample)
        if key in bad:
            reason, kind = bad[key]
            return SampleError(sample.id, reason, kind=kind)
        return None if key in ok else image_problem(sample, True)

    return check


def prepare_on_ray(
    specs: list[str],
    out_dir: str | Path,
    *,
    opts: RayOptions,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    filter: SampleFilter | None = None,
    progress: bool = True,
    **prepare_kwargs: Any,
) -> tuple[DataReport, dict[str, Any], JobStats]:
    """``prepare`` with its image decoding done by Ray tasks; returns (report, info, Ray stats).
    ``prepare_kwargs`` (``to``, ``shard_size``, ``overwrite``) go to :func:`~deepsynth.data.prepare.prepare`."""
    flt = filter or SampleFilter()
    out_dir = Path(out_dir)
    check_dir = out_dir.with_name(out_dir.name + ".ray-check")
    job = {"command": "prepare", "sources": list(specs), "max_pixels": max_pixels,
           "filter": {k: v for k, v in dataclasses.asdict(flt).items() if k != "limit"},
           "shard_size": opts.shard_size}  # fmt: skip
    store = ShardStore(check_dir, json.loads(json.dumps(job, default=str)))
    dashboard = connect(opts.address)
    candidates = open_user_sources(specs, filter=dataclasses.replace(flt, limit=None), decode=False,
                                   max_pixels=max_pixels)  # fmt: skip
    stages = Stages(decode=check_images, decode_kwargs={"cwd": os.getcwd()}, assemble=_assemble)
    shards = shard_tables(distinct_images(candidates), opts.shard_size, IMAGE_SCHEMA)
    stats = run_sharded(shards, store, stages, opts, progress=progress)
    stats.dashboard = dashboard
    report, info = prepare(specs, out_dir, max_pixels=max_pixels, filter=flt, progress=progress,
                           image_check=checked_images(store), **prepare_kwargs)  # fmt: skip
    shutil.rmtree(check_dir, ignore_errors=True)
    return report, info, stats
