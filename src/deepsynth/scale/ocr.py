"""``deepsynth ocr --ray``: batch OCR of files on a Ray cluster, with the same records as the in-process run.

Files are cut into shards; CPU tasks read them and render PDFs per page; a one-page image file travels as
its path only (not 25 MB of RGB for a 2550x3300 page, nor its bytes, which would queue in the driver's memory
while the actors are busy: Ray keeps task results under 100 KB in their owner's heap) and the actor reads and
decodes it with the same ``decode_path`` as ``deepsynth ocr``. Each actor holds one :class:`OCRService` built from the same
spec and reads page batches with ``OCRService.recognize``; two batches run at once in an actor, so one is
decoded while the engine reads the other (as ``deepsynth ocr`` decodes ahead in a thread); the driver builds each file's record with the same
``file_record`` / ``error_record`` and writes it to a shard. ``--out`` is rewritten from the completed shards
(kept next to it in ``OUT.shards/``) in input order.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from deepsynth.inference.batch_files import (
    OFFLINE_LIMITS,
    decode_path,
    error_record,
    file_record,
    output_name,
    output_root,
    page_record,
    run_options,
    write_side_outputs,
)
from deepsynth.inference.inputs import InputError, image_frames
from deepsynth.inference.limits import ServingLimits
from deepsynth.inference.pdf import is_pdf
from deepsynth.models.generation import GenerationConfig
from deepsynth.scale.metrics import WORKER_FIELDS, WorkerMeter
from deepsynth.scale.pipeline import JobStats, Stages, run_sharded, shard_tables
from deepsynth.scale.pixels import NO_PIXELS, from_pixels, to_pixels
from deepsynth.scale.runtime import RayOptions, connect
from deepsynth.scale.shards import ShardStore, ShardStoreError

FILE_SCHEMA = pa.schema([("shard", pa.int64()), ("unit", pa.int64()), ("path", pa.string())])
PAGE_SCHEMA = pa.schema([("shard", pa.int64()), ("unit", pa.int64()), ("part", pa.int64()),
                         ("n_parts", pa.int64()), ("path", pa.string()), ("page", pa.int64()),
                         ("width", pa.int64()), ("height", pa.int64()), ("pixels", pa.large_binary()),
                         ("encoded", pa.bool_()), ("error", pa.string()), ("kind", pa.string()), ("seconds", pa.float64())])  # fmt: skip
RESULT_SCHEMA = pa.schema([("shard", pa.int64()), ("unit", pa.int64()), ("part", pa.int64()),
                           ("n_parts", pa.int64()), ("path", pa.string()), ("result", pa.string()),
                           *WORKER_FIELDS])  # fmt: skip


def shard_dir(out: Path) -> Path:
    """Where the shards and manifest of ``--out`` live."""
    return out.with_name(out.name + ".shards")


def one_image(path: Path) -> bool:
    """Whether the file at ``path`` is a one-page image, from its first bytes only (the actor reads the rest).
    Anything else, an unreadable file included, is read whole by the task, which names what is wrong."""
    try:
        with path.open("rb") as f:
            if is_pdf(f.read(1024)):
                return False
            f.seek(0)
            with Image.open(f) as img:
                return image_frames(img) == 1
    except Exception:  # noqa: BLE001 - decode_path names what is wrong with it, in the task
        return False


def decode_files(batch: pa.Table, limits: dict[str, Any]) -> pa.Table:
    """Ray task: files → one row per page, or one error row naming the file.

    A one-page image travels as its path (``encoded``, no pixels; :class:`OCRWorker` reads and decodes it);
    PDF and multi-frame pages are decoded here and travel as RGB pixels."""
    lim = ServingLimits(**limits)
    rows: list[dict[str, Any]] = []
    for r in batch.select(["shard", "unit", "path"]).to_pylist():
        t0 = time.perf_counter()
        try:
            if one_image(Path(r["path"])):
                rows.append({**r, "part": 0, "n_parts": 1, "page": 1, **NO_PIXELS,
                             "encoded": True, "error": None, "kind": None,
                             "seconds": time.perf_counter() - t0})  # fmt: skip
                continue
            pages = decode_path(Path(r["path"]), lim)
        except InputError as exc:
            rows.append({**r, "part": 0, "n_parts": 1, "page": 0, **NO_PIXELS, "encoded": False,
                         "error": str(exc), "kind": exc.kind, "seconds": time.perf_counter() - t0})  # fmt: skip
            continue
        share = (time.perf_counter() - t0) / len(pages)
        for i, pg in enumerate(pages):
            rows.append({**r, "part": i, "n_parts": len(pages), "page": pg.page, **to_pixels(pg.image),
                         "encoded": False, "error": None, "kind": None, "seconds": share})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=PAGE_SCHEMA)


CALLS_PER_WORKER = 2  # batches at once in an OCRWorker: one decoding while the engine reads the other


class OCRWorker:
    """Ray actor: one :class:`OCRService` (built like ``deepsynth ocr`` builds it) reading page batches.

    Runs ``CALLS_PER_WORKER`` batches at once: each reads and decodes its image files outside the engine lock, then
    reads them under it, so the engine reads one batch at a time and never waits for a decode."""

    def __init__(
        self, spec: str, engine_kwargs: dict[str, Any], generation: dict[str, Any], limits: dict[str, Any]
    ):
        from deepsynth.inference.service import OCRService
        from deepsynth.observability import Observability

        self.service = OCRService(spec, obs=Observability(spec, metrics=False), engine_kwargs=engine_kwargs)
        self.generation = GenerationConfig(**generation)
        self.limits = ServingLimits(**limits)
        self.meter = WorkerMeter("ocr")
        self.engine_lock = threading.Lock()

    def _image(self, row: dict[str, Any]) -> Image.Image:
        """A row's page: the image file read and decoded here, or the RGB pixels of a rendered page."""
        if row["encoded"]:
            path = Path(row["path"])
            (page,) = decode_path(path, self.limits)
            return page.image
        return from_pixels(row)

    def _read(self, rows: list[dict[str, Any]], images: list[Image.Image]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        preds = self.service.recognize(images, self.generation)
        share = (time.perf_counter() - t0) / len(rows)
        return [{"page": page_record(r["page"], p), "seconds": r["seconds"] + share}
                for r, p in zip(rows, preds, strict=True)]  # fmt: skip

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = batch.to_pylist()
        results: list[dict[str, Any] | None] = [
            None if r["error"] is None else {"error": r["error"], "kind": r["kind"]} for r in rows
        ]
        images: dict[int, Image.Image] = {}
        for i, r in enumerate(rows):
            if r["error"] is None:
                d0 = time.perf_counter()
                try:
                    images[i] = self._image(r)
                except InputError as exc:  # a file whose pixels are corrupt past its header
                    results[i] = {"error": str(exc), "kind": exc.kind}
                r["seconds"] += time.perf_counter() - d0
        todo = list(images)
        w0 = time.perf_counter()
        with self.engine_lock:
            waited = time.perf_counter() - w0
            try:
                done = self._read([rows[i] for i in todo], list(images.values())) if todo else []
            except Exception:  # isolate the failing page: one by one
                done = []
                for i in todo:
                    try:
                        done.extend(self._read([rows[i]], [images[i]]))
                    except Exception as exc:
                        done.append(
                            {"error": f"model error: {type(exc).__name__}: {exc}", "kind": "model_error"}
                        )
        for i, res in zip(todo, done, strict=True):
            results[i] = res
        keys = ("shard", "unit", "part", "n_parts", "path")
        out = [{**{k: r[k] for k in keys}, "result": json.dumps(res, ensure_ascii=False)}
               for r, res in zip(rows, results, strict=True)]  # fmt: skip
        failures = [res["kind"] if "error" in res else None for res in results if res is not None]
        out = self.meter.stamp(out, failures, time.perf_counter() - t0 - waited)
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


def assemble_file(
    model_id: str, options: dict[str, Any]
) -> Callable[[list[dict[str, Any]]], tuple[dict[str, Any], str | None]]:
    """The driver's record builder: a file's page results → the same record ``deepsynth ocr`` writes."""

    def assemble(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
        path = Path(rows[0]["path"])
        results = [json.loads(r["result"]) for r in rows]
        failed = next((res for res in results if "error" in res), None)
        if failed is not None:
            return error_record(path, model_id, failed["error"], options), failed["kind"]
        seconds = sum(res["seconds"] for res in results)
        return file_record(path, model_id, [res["page"] for res in results], seconds, options), None

    return assemble


def ocr_on_ray(
    spec: str,
    files: Sequence[Path],
    out: Path,
    *,
    opts: RayOptions,
    engine_kwargs: dict[str, Any] | None = None,
    generation: GenerationConfig | None = None,
    limits: ServingLimits | None = None,
    txt_dir: Path | None = None,
    md_dir: Path | None = None,
    progress: bool = True,
    on_shard: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> JobStats:
    """Run ``deepsynth ocr`` on Ray: every file of ``files`` gets exactly one record in ``out``.

    ``files`` is read in passes (digest and common folder, then the shards), never copied: a sequence that
    makes its paths on demand keeps the driver's memory flat however many files there are."""
    generation = generation or GenerationConfig()
    limits = limits or OFFLINE_LIMITS
    shards = shard_dir(out)
    if out.exists() and not (shards / "job.json").is_file():
        raise ShardStoreError(f"{out} holds results of an in-process run; use another --out for --ray")
    digest = hashlib.sha256()
    for i, path in enumerate(files):  # the digest of the joined paths, without joining them
        digest.update((f"\n{path}" if i else str(path)).encode())
    job = {"command": "ocr", "model": spec, "server_model": (engine_kwargs or {}).get("model"),
           "inputs_sha256": digest.hexdigest(), "n_inputs": len(files), "shard_size": opts.shard_size,
           "limits": asdict(limits), "generation": generation.to_dict()}  # fmt: skip
    store = ShardStore(shards, job)
    dashboard = connect(opts.address)
    root = output_root(files)

    def side_outputs(index: int, records: list[dict[str, Any]]) -> None:
        for rec in records:
            if rec["status"] == "ok":
                write_side_outputs(rec, output_name(Path(rec["input"]), root), txt_dir, md_dir)
        if on_shard is not None:
            on_shard(index, records)

    stages = Stages(decode=decode_files, decode_kwargs={"limits": asdict(limits)},
                    assemble=assemble_file(spec, run_options(generation, limits)), worker=OCRWorker,
                    worker_kwargs={"spec": spec, "engine_kwargs": engine_kwargs or {},
                                   "generation": generation.to_dict(), "limits": asdict(limits)},
                    worker_calls=CALLS_PER_WORKER)  # fmt: skip
    shards = shard_tables(({"path": str(p)} for p in files), opts.shard_size, FILE_SCHEMA)
    stats = run_sharded(shards, store, stages, opts, on_shard=side_outputs, progress=progress,
                        total=len(files) - store.n_records)  # fmt: skip
    store.merge(out)
    stats.dashboard = dashboard
    return stats
