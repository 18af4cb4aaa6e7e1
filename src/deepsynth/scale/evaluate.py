"""``deepsynth eval --ray``: the evaluation harness on a Ray cluster, with the same predictions and metrics.

The driver streams the sources with the data layer (same filters, splits, duplicate and missing-image checks,
same excluded flags) into shards; CPU tasks decode each image with the data layer's checked loader
(``Sample.image`` over an ``ImageRef``); each actor holds one engine from the registry and turns batches into
prediction records with the harness's ``recognize_records``. Shards are merged in input order into
``predictions.jsonl`` and scored by the harness's ``finish_run``, so metrics are computed by the same code from
the same file as an in-process run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from deepsynth.data.images import ImageRef, sample_image_bytes
from deepsynth.data.sample import Sample, SampleError
from deepsynth.evaluation.harness import (
    PREDICTIONS,
    RUN_INFO,
    Excluded,
    RunDirError,
    finish_run,
    open_run_dir,
    recognize_records,
)
from deepsynth.models.generation import GenerationConfig
from deepsynth.scale.metrics import WORKER_FIELDS, WorkerMeter
from deepsynth.scale.pipeline import JobStats, Stages, run_sharded, shard_tables
from deepsynth.scale.pixels import NO_PIXELS, from_pixels, to_pixels
from deepsynth.scale.runtime import RayOptions, connect
from deepsynth.scale.shards import ShardStore

SHARDS = "shards"
_FIELDS = [("shard", pa.int64()), ("unit", pa.int64()), ("id", pa.string()), ("text", pa.string()),
           ("language", pa.string()), ("subset", pa.string()), ("level", pa.string()), ("meta", pa.string()),
           ("image_path", pa.string())]  # fmt: skip
SAMPLE_SCHEMA = pa.schema([*_FIELDS, ("image_bytes", pa.large_binary()), ("max_pixels", pa.int64())])
DECODED_SCHEMA = pa.schema([*_FIELDS, ("width", pa.int64()), ("height", pa.int64()),
                            ("pixels", pa.large_binary()), ("error", pa.string()), ("kind", pa.string())])  # fmt: skip
RESULT_SCHEMA = pa.schema([("shard", pa.int64()), ("unit", pa.int64()), ("part", pa.int64()),
                           ("n_parts", pa.int64()), ("engine", pa.string()), ("result", pa.string()),
                           *WORKER_FIELDS])  # fmt: skip


def _row(sample: Sample) -> dict[str, Any]:
    loader = sample.image_loader
    row: dict[str, Any] = {"id": sample.id, "text": sample.text, "language": sample.language,
                           "subset": sample.subset, "level": sample.level,
                           "meta": json.dumps(sample.meta, ensure_ascii=False, default=str),
                           "image_path": None, "image_bytes": None, "max_pixels": None}  # fmt: skip
    if isinstance(loader, ImageRef):
        row["max_pixels"] = loader.max_pixels
        if loader.path is not None:
            row["image_path"] = str(loader.path)
        else:
            row["image_bytes"] = loader.data
    else:  # e.g. synthetic samples: ship the decoded image losslessly
        row["image_bytes"] = sample_image_bytes(sample)[0]
    return row


def sample_rows(samples: Iterable[Sample]) -> Iterator[dict[str, Any]]:
    """Input rows of ``samples`` (images as paths or bytes; decoded images are released)."""
    for sample in samples:
        yield _row(sample)
        sample.release()


def decode_samples(batch: pa.Table, cwd: str) -> pa.Table:
    """Ray task: decode each image with the data layer's checked loader; failures become error rows.
    Relative image paths are read from the driver's working directory ``cwd``."""
    out = []
    for r in batch.to_pylist():
        path, data, max_pixels = r.pop("image_path"), r.pop("image_bytes"), r.pop("max_pixels")
        ref = ImageRef(r["id"], path=Path(cwd, path), max_pixels=max_pixels) if path else None
        ref = ref or ImageRef(r["id"], data=data or b"", max_pixels=max_pixels)
        try:
            decoded = {
                **to_pixels(Sample(r["id"], r["text"], image_loader=ref).image),
                "error": None,
                "kind": None,
            }
        except SampleError as exc:
            decoded = {**NO_PIXELS, "error": exc.reason, "kind": exc.kind or "corrupt_image"}
        out.append({**r, "image_path": path, **decoded})
    return pa.Table.from_pylist(out, schema=DECODED_SCHEMA)


class _Decoded:
    """``image_loader`` of a sample decoded upstream: keeps its path (for the record) and re-raises the
    decoding error the data layer reported, so the harness records it exactly as in-process."""

    __slots__ = ("path", "sample_id", "error", "kind")

    def __init__(self, row: dict[str, Any]):
        self.path = Path(row["image_path"]) if row["image_path"] else None
        self.sample_id, self.error, self.kind = row["id"], row["error"], row["kind"]

    def __call__(self) -> Any:
        raise SampleError(self.sample_id, self.error or "no image", kind=self.kind)


class EvalWorker:
    """Ray actor: one engine from the registry; batches → prediction records (``recognize_records``)."""

    def __init__(self, spec: str, engine_opts: dict[str, Any], generation: dict[str, Any] | None):
        from deepsynth.models.registry import load_engine

        self.engine = load_engine(spec, **engine_opts)
        self.name = getattr(self.engine, "name", type(self.engine).__name__)
        self.generation = GenerationConfig(**generation) if generation else None
        self.meter = WorkerMeter("eval")

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = batch.to_pylist()
        samples = []
        for r in rows:
            s = Sample(r["id"], r["text"], image_loader=_Decoded(r), language=r["language"], subset=r["subset"],
                       level=r["level"], meta=json.loads(r["meta"]))  # fmt: skip
            if r["error"] is None:
                s._image = from_pixels(r)
            samples.append(s)
        records = recognize_records(self.engine, samples, self.generation)
        out = [{"shard": r["shard"], "unit": r["unit"], "part": 0, "n_parts": 1, "engine": self.name,
                "result": json.dumps(rec, ensure_ascii=False)} for r, rec in zip(rows, records, strict=True)]  # fmt: skip
        out = self.meter.stamp(out, [_failure_kind(rec) for rec in records], time.perf_counter() - t0)
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


def _failure_kind(rec: dict[str, Any]) -> str | None:
    if rec.get("error") is None:
        return None
    return "unreadable_image" if rec["error"].startswith("unreadable") else "engine_error"


def evaluate_on_ray(
    spec: str,
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    opts: RayOptions,
    job: dict[str, Any],
    engine_opts: dict[str, Any] | None = None,
    normalize: str = "none",
    generation: GenerationConfig | None = None,
    exclude_flags: Iterable[str] = ("has_untranscribed",),
    dataset: str | list[str] | None = None,
    bootstrap: int = 1000,
    progress: bool = True,
    on_shard: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> tuple[dict[str, Any], JobStats]:
    """Evaluate engine ``spec`` on ``samples`` with Ray; returns (metrics as ``evaluate_engine`` gives, stats).

    ``job`` describes the inputs (sources, filters) for the shard fingerprint: a rerun with the same job
    resumes per shard; another job into the same ``out_dir`` is refused.
    """
    out = Path(out_dir)
    if (out / PREDICTIONS).is_file() and not (out / SHARDS / "job.json").is_file():
        raise RunDirError(f"{out} holds an in-process run; use another --out directory for --ray")
    store = ShardStore(out / SHARDS, {"command": "eval", "engine": spec, "engine_opts": engine_opts or {},
                                      "generation": None if generation is None else generation.to_dict(),
                                      "shard_size": opts.shard_size, **job})  # fmt: skip
    dashboard = connect(opts.address)
    excluded = Excluded(tuple(exclude_flags))
    names: set[str] = set()

    def assemble(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
        names.add(rows[0]["engine"])
        rec = json.loads(rows[0]["result"])
        return rec, _failure_kind(rec)

    kept = (s for s in samples if not excluded.check(s))
    stages = Stages(decode=decode_samples, decode_kwargs={"cwd": os.getcwd()}, assemble=assemble, worker=EvalWorker,
                    worker_kwargs={"spec": spec, "engine_opts": engine_opts or {},
                                   "generation": None if generation is None else generation.to_dict()})  # fmt: skip
    shards = shard_tables(sample_rows(kept), opts.shard_size, SAMPLE_SCHEMA)
    stats = run_sharded(shards, store, stages, opts, on_shard=on_shard, progress=progress)
    stats.dashboard = dashboard
    if not names and (out / RUN_INFO).is_file():  # everything resumed: the engine name of the earlier run
        names.add(json.loads((out / RUN_INFO).read_text(encoding="utf-8"))["engine"])
    engine_name = names.pop() if names else spec
    datasets = open_run_dir(out, engine_name, dataset)
    store.merge(out / PREDICTIONS)
    result = finish_run(out, engine_name, datasets, normalize=normalize, excluded=excluded,
                        resumed=stats.resumed, new=stats.new, seconds=stats.seconds, generation=generation,
                        bootstrap=bootstrap, extra={"ray": stats.to_dict()})  # fmt: skip
    return result, stats
