"""Batch OCR of files on disk (what ``deepsynth ocr`` runs): images, multi-page TIFFs and PDFs → JSONL.

Resumable: inputs that already have an ``"status": "ok"`` record in the output JSONL are skipped; inputs that
failed are tried again (readers should take the last record per input). Every record names its model and the
options that change its text (:func:`run_options`); an output holding another model's or options' records is
refused (:class:`ResumeError`) rather than silently skipping files. Pages of several small files are batched
together; a file's record is written as soon as its last page is read, with its own time (its decoding plus
its pages' share of each model call); a failing batch is retried file by file so one bad file only fails its
own record. Files are read and decoded (PDFs rendered) in a background thread a few files ahead of the model,
so decoding overlaps with model calls (Pillow's decoders, pdfium and torch all release the GIL while they
work). Ctrl-C stops after the records written so far (``BatchSummary.interrupted``).
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
from deepsynth.models.generation import GenerationConfig

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


class ResumeError(ValueError):
    """An output JSONL that holds records of another model or other options."""


def run_options(generation: GenerationConfig, limits: ServingLimits) -> dict[str, Any]:
    """What besides the model changes a record's text: the PDF resolution and non-default generation knobs."""
    defaults = GenerationConfig().to_dict()
    changed = {k: v for k, v in generation.to_dict().items() if v != defaults[k]}
    return {"dpi": limits.pdf_dpi, **changed}


def load_done(
    out: Path, model_id: str | None = None, options: dict[str, Any] | None = None
) -> tuple[set[str], int]:
    """Inputs already done in an existing JSONL (status ok) and the number of unreadable lines skipped.

    With ``model_id`` given, a record of another model or other ``options`` raises :class:`ResumeError`."""
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
            if model_id is not None:
                _check_same_run(out, rec, model_id, options or {})
            if rec.get("status") == "ok":
                done.add(rec["input"])
            else:
                done.discard(rec.get("input"))
    return done, bad


def _check_same_run(out: Path, rec: dict[str, Any], model_id: str, options: dict[str, Any]) -> None:
    theirs = (rec.get("model"), rec.get("options", options))
    if theirs != (model_id, options):
        raise ResumeError(
            f"{out} holds results of model {theirs[0]} with options {json.dumps(theirs[1])}; this run is "
            f"{model_id} with {json.dumps(options)}: use another --out (or the same model and options to resume)"
        )


@dataclass
class BatchSummary:
    total: int = 0
    skipped_done: int = 0
    ok: int = 0
    failed: int = 0
    pages: int = 0
    seconds: float = 0.0
    interrupted: bool = False
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
            "interrupted": self.interrupted,
            "errors": self.errors,
        }

    def human(self, out: Path) -> str:
        """The final lines ``deepsynth ocr`` prints (``--json`` prints :meth:`to_dict` instead)."""
        rate = f", {self.pages / self.seconds:.2f} pages/s" if self.seconds and self.pages else ""
        lines = [f"read {self.ok} file(s), {self.pages} page(s) in {self.seconds:.1f} s{rate}; "
                 f"{self.failed} failed; {self.skipped_done} already done earlier -> {out}"]  # fmt: skip
        if self.interrupted:
            done = self.skipped_done + self.ok
            lines.append(f"interrupted: {done} of {self.total} file(s) have their record in {out}; "
                         "run the same command again to read the rest")  # fmt: skip
        return "\n".join(lines)


def read_path(path: Path) -> bytes:
    """The bytes of one input file; an unreadable file is an InputError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(400, "unreadable_file", f"cannot read {path}: {exc}", path.name) from exc


def decode_path(path: Path, limits: ServingLimits) -> list[PageInput]:
    """Read and decode one input file into pages; any problem is an InputError naming the file."""
    return decode_file(read_path(path), path.name, None, limits)


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


def output_root(paths: Iterable[Path]) -> Path | None:
    """The folder that --txt-dir / --md-dir names are relative to: the inputs' common parent (one pass)."""
    root: str | None = None
    for p in paths:
        root = str(p.parent) if root is None else os.path.commonpath([root, str(p.parent)])
    return None if root is None else Path(root)


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


def file_record(
    path: Path, model_id: str, page_recs: list[dict[str, Any]], seconds: float, options: dict[str, Any]
) -> dict[str, Any]:
    """The JSONL record of one file read successfully (its pages from :func:`page_record`)."""
    text = "\n\n".join(r["text"] for r in page_recs)
    rec = {
        "input": str(path),
        "model": model_id,
        "options": options,
        "status": "ok",
        "n_pages": len(page_recs),
    }
    rec.update(text=text, pages=page_recs, seconds=round(seconds, 4))
    return rec


def error_record(path: Path, model_id: str, message: str, options: dict[str, Any]) -> dict[str, Any]:
    """The JSONL record of a file that could not be read or recognised."""
    return {"input": str(path), "model": model_id, "options": options, "status": "error", "error": message}


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


@dataclass(eq=False)
class _File:
    path: Path
    pages: list[PageInput]
    seconds: float  # its decoding, plus its pages' share of each model call so far
    preds: list[Prediction] = field(default_factory=list)
    resolved: bool = False


def ocr_files(
    recognize: Any,
    paths: Sequence[Path],
    out: Path,
    *,
    model_id: str,
    options: dict[str, Any] | None = None,
    txt_dir: Path | None = None,
    md_dir: Path | None = None,
    batch_pages: int = 8,
    limits: ServingLimits | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Read ``paths`` with ``recognize(images) -> list[Prediction]`` and append one JSONL record per file.

    ``options`` (default: :func:`run_options` of the default generation and ``limits``) go into every record
    and must match the records already in ``out`` (else :class:`ResumeError`). Ctrl-C returns the summary so
    far with ``interrupted`` set; every record written until then is complete."""
    from tqdm import tqdm

    limits = limits or OFFLINE_LIMITS
    options = options if options is not None else run_options(GenerationConfig(), limits)
    done, _ = load_done(out, model_id, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary(total=len(paths))
    todo = [p for p in paths if str(p) not in done]
    summary.skipped_done = len(paths) - len(todo)
    root = output_root(paths)
    t_start = time.perf_counter()
    pending: list[_File] = []

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
            write(error_record(path, model_id, message, options))

        def finish(f: _File) -> None:
            f.resolved = True
            page_recs = [page_record(pg.page, pr) for pg, pr in zip(f.pages, f.preds, strict=True)]
            rec = file_record(f.path, model_id, page_recs, f.seconds, options)
            write_side_outputs(rec, output_name(f.path, root), txt_dir, md_dir)
            summary.ok += 1
            summary.pages += len(f.pages)
            write(rec)

        def read(images: list[Any]) -> tuple[list[Prediction], float]:
            t0 = time.perf_counter()
            preds = []
            for i in range(0, len(images), batch_pages):
                preds.extend(recognize(images[i : i + batch_pages]))
            return preds, time.perf_counter() - t0

        def isolate(f: _File) -> None:  # after a failed batch: this file alone, so it fails only itself
            try:
                f.preds, seconds = read([pg.image for pg in f.pages])
                f.seconds += seconds
                finish(f)
            except Exception as exc:
                f.resolved = True
                fail(f.path, f"model error: {type(exc).__name__}: {exc}")

        def flush() -> None:
            entries = [(f, pg) for f in pending for pg in f.pages]
            i = 0
            while i < len(entries):
                chunk: list[tuple[_File, PageInput]] = []
                while i < len(entries) and len(chunk) < batch_pages:
                    if not entries[i][0].resolved:  # a file isolated after a failed batch is done
                        chunk.append(entries[i])
                    i += 1
                if not chunk:
                    break
                try:
                    preds, seconds = read([pg.image for _, pg in chunk])
                except Exception:
                    for f in dict.fromkeys(f for f, _ in chunk):
                        if not f.resolved:
                            isolate(f)
                    continue
                for (f, _), pred in zip(chunk, preds, strict=True):
                    f.preds.append(pred)
                    f.seconds += seconds / len(chunk)
                    if len(f.preds) == len(f.pages):
                        finish(f)  # written now, not at the end of the batch
            pending.clear()

        try:
            for path, pages, decode_s in decode_ahead(todo, limits):
                if isinstance(pages, str):
                    fail(path, pages)
                    continue
                pending.append(_File(path, pages, decode_s))
                if sum(len(f.pages) for f in pending) >= batch_pages:
                    flush()
            flush()
        except KeyboardInterrupt:
            summary.interrupted = True
    summary.seconds = time.perf_counter() - t_start
    return summary


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
