"""Batch OCR of files on disk (what ``deepsynth ocr`` runs): images, multi-page TIFFs and PDFs → JSONL.

Resumable: inputs that already have an ``"status": "ok"`` record in the output JSONL are skipped; inputs that
failed are tried again (readers should take the last record per input). Pages of several small files are
batched together; a failing batch is retried file by file so one bad file only fails its own record. Files are
read and decoded (PDFs rendered) in a background thread a few files ahead of the model, so decoding overlaps
with model calls (Pillow's decoders, pdfium and torch all release the GIL while they work).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsynth.inference.inputs import InputError, PageInput, decode_file
from deepsynth.inference.limits import ServingLimits
from deepsynth.models.base import Prediction

# offline batches read whole books: no per-request page or pixel budget beyond what one file needs
OFFLINE_LIMITS = ServingLimits(
    max_pages=10_000, max_pixels=200_000_000, max_request_pixels=10**13, max_upload_mb=2**20
)

IMAGE_EXTS = {
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".webp",
    ".bmp",
    ".gif",
    ".jp2",
    ".pbm",
    ".pgm",
    ".ppm",
}
INPUT_EXTS = IMAGE_EXTS | {".pdf"}


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (recursively: images and PDFs) and globs → a sorted, de-duplicated list of files.

    Raises FileNotFoundError naming an argument that matches nothing.
    """
    found: dict[str, Path] = {}
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_file():
            candidates: Iterable[Path] = [p]
        elif p.is_dir():
            candidates = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in INPUT_EXTS)
        else:
            matches = sorted(glob.glob(str(p), recursive=True))
            candidates = [
                Path(m) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in INPUT_EXTS
            ]
            if not matches:
                raise FileNotFoundError(f"no such file, folder or glob match: {pattern}")
        for c in candidates:
            found.setdefault(str(c.resolve()), c.resolve())
    return [found[k] for k in sorted(found)]


def load_done(out: Path) -> tuple[set[str], int]:
    """Inputs already done in an existing JSONL (status ok) and the number of unreadable lines skipped."""
    done: set[str] = set()
    bad = 0
    if not out.is_file():
        return done, bad
    with out.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # e.g. a line cut short by a crash; that input is simply done again
                continue
            if rec.get("status") == "ok":
                done.add(rec["input"])
            else:
                done.discard(rec.get("input"))
    return done, bad


@dataclass
class BatchSummary:
    total: int = 0
    skipped_done: int = 0
    ok: int = 0
    failed: int = 0
    pages: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped_done": self.skipped_done,
            "ok": self.ok,
            "failed": self.failed,
            "pages": self.pages,
            "seconds": round(self.seconds, 3),
            "pages_per_second": round(self.pages / self.seconds, 3) if self.seconds else None,
            "errors": self.errors,
        }


def decode_path(path: Path, limits: ServingLimits) -> list[PageInput]:
    """Read and decode one input file into pages; any problem is an InputError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(400, "unreadable_file", f"cannot read {path}: {exc}", path.name) from exc
    return decode_file(data, path.name, None, limits)


def decode_ahead(
    paths: Sequence[Path], limits: ServingLimits, ahead: int = 2
) -> Iterator[tuple[Path, list[PageInput] | str, float]]:
    """Yield ``(path, pages or error message, decode seconds)`` in order, decoding up to ``ahead`` files ahead
    in a background thread. Unreadable or undecodable files yield their error message; anything else raised
    while decoding is re-raised here."""
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def work() -> None:
        try:
            for path in paths:
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                try:
                    item: list[PageInput] | str = decode_path(path, limits)
                except InputError as exc:
                    item = str(exc)
                q.put((path, item, time.perf_counter() - t0))
            q.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=work, name="deepsynth-decode", daemon=True)
    thread.start()
    try:
        while (entry := q.get()) is not None:
            if isinstance(entry, BaseException):
                raise entry
            yield entry
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue, then let it see ``stop``
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
            thread.join(0.01)


def output_root(paths: Sequence[Path]) -> Path | None:
    """The folder that --txt-dir / --md-dir names are relative to: the inputs' common parent."""
    return Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else None


def output_name(path: Path, root: Path | None) -> Path:
    rel = path.relative_to(root) if root is not None else Path(path.name)
    return rel.with_suffix("")


def page_record(page: int, pred: Prediction) -> dict[str, Any]:
    """The JSONL entry of one page read into ``pred``."""
    rec = {
        "page": page,
        "text": pred.text,
        "confidence": pred.confidence,
        "finished": pred.finished,
        "num_tokens": pred.num_tokens,
    }
    if pred.meta.get("repetition"):
        rec["repetition"] = True
    return rec


def file_record(path: Path, model_id: str, page_recs: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The JSONL record of one file read successfully (its pages from :func:`page_record`)."""
    text = "\n\n".join(r["text"] for r in page_recs)
    rec = {"input": str(path), "model": model_id, "status": "ok", "n_pages": len(page_recs), "text": text}
    rec.update(pages=page_recs, seconds=round(seconds, 4))
    return rec


def error_record(path: Path, model_id: str, message: str) -> dict[str, Any]:
    """The JSONL record of a file that could not be read or recognised."""
    return {"input": str(path), "model": model_id, "status": "error", "error": message}


def write_side_outputs(rec: dict[str, Any], name: Path, txt_dir: Path | None, md_dir: Path | None) -> None:
    """One .txt and/or .md per successful file record (``name``: its path relative to the inputs' root)."""
    page_recs = rec["pages"]
    if txt_dir is not None:
        _write_text(txt_dir / name.with_suffix(".txt"), rec["text"] + "\n")
    if md_dir is not None:
        if len(page_recs) == 1:
            md = rec["text"]
        else:
            md = "\n\n".join(f"<!-- page {r['page']} -->\n\n{r['text']}" for r in page_recs)
        _write_text(md_dir / name.with_suffix(".md"), md + "\n")


def ocr_files(
    recognize: Any,
    paths: Sequence[Path],
    out: Path,
    *,
    model_id: str,
    txt_dir: Path | None = None,
    md_dir: Path | None = None,
    batch_pages: int = 8,
    limits: ServingLimits | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Read ``paths`` with ``recognize(images) -> list[Prediction]`` and append one JSONL record per file."""
    from tqdm import tqdm

    limits = limits or OFFLINE_LIMITS
    out.parent.mkdir(parents=True, exist_ok=True)
    done, _ = load_done(out)
    summary = BatchSummary(total=len(paths))
    todo = [p for p in paths if str(p) not in done]
    summary.skipped_done = len(paths) - len(todo)
    root = output_root(paths)
    t_start = time.perf_counter()
    pending: list[tuple[Path, list[PageInput], float]] = []

    with (
        out.open("a", encoding="utf-8") as fh,
        tqdm(total=len(todo), disable=not progress, unit="file") as bar,
    ):

        def write(rec: dict[str, Any]) -> None:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(1)

        def fail(path: Path, message: str) -> None:
            summary.failed += 1
            summary.errors.append({"input": str(path), "error": message})
            write(error_record(path, model_id, message))

        def finish(path: Path, pages: list[PageInput], preds: list[Any], t0: float) -> None:
            page_recs = [page_record(pg.page, pr) for pg, pr in zip(pages, preds, strict=True)]
            rec = file_record(path, model_id, page_recs, time.perf_counter() - t0)
            write_side_outputs(rec, output_name(path, root), txt_dir, md_dir)
            summary.ok += 1
            summary.pages += len(pages)
            write(rec)

        def flush() -> None:
            if not pending:
                return
            images = [pg.image for _, pages, _ in pending for pg in pages]
            try:
                preds = []
                for i in range(0, len(images), batch_pages):
                    preds.extend(recognize(images[i : i + batch_pages]))
            except Exception:
                preds = None
            if preds is not None:
                k = 0
                for path, pages, t0 in pending:
                    finish(path, pages, preds[k : k + len(pages)], t0)
                    k += len(pages)
            else:  # isolate: file by file
                for path, pages, t0 in pending:
                    try:
                        file_preds = []
                        for i in range(0, len(pages), batch_pages):
                            file_preds.extend(recognize([pg.image for pg in pages[i : i + batch_pages]]))
                        finish(path, pages, file_preds, t0)
                    except Exception as exc:
                        fail(path, f"model error: {type(exc).__name__}: {exc}")
            pending.clear()

        for path, pages, decode_s in decode_ahead(todo, limits):
            if isinstance(pages, str):
                fail(path, pages)
                continue
            # a file's seconds = its decoding + from then until its record is written (as when decoded inline)
            pending.append((path, pages, time.perf_counter() - decode_s))
            if sum(len(p) for _, p, _ in pending) >= batch_pages:
                flush()
        flush()
    summary.seconds = time.perf_counter() - t_start
    return summary


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
