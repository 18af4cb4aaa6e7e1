"""Feedback store: corrections posted to ``POST /v1/feedback``, kept as labelled data for the improvement loop.
**Off by default** (the images and texts are personal data): on with ``deepsynth serve --feedback-dir DIR`` or
``DEEPSYNTH_FEEDBACK_DIR``; the other feedback variables of docs/environment.md tune it (docs/privacy.md).

``DIR`` is a JSONL source the data layer reads, so it can be an entry of the loop's inbox:

=========================  =====================================================================================
``manifest.jsonl``         one labelled sample per correction: ``id``, ``image``, ``text``, ``doc_type``,
                           ``page_id`` (the request: its pages stay on one side of the holdout), ``request_id``,
                           ``page``, ``model``, ``created``
``images/``                the page each correction is about: the uploaded image as sent, or the rendered page
``inputs/<stamp>_<id>/``   what each served request sent (its files and ``meta.json``), kept
                           ``DEEPSYNTH_FEEDBACK_KEEP_INPUTS_HOURS`` so that feedback can name the request id
``audit.jsonl``            every store and deletion (ids, files, sizes, reasons; never the text)
=========================  =====================================================================================

The manifest changes by read-modify-write under a file lock (the server and ``deepsynth samples delete`` may
both write) and is replaced atomically (fsync + rename): a reader sees the old or the new manifest. An image is
written before the line naming it and removed after the line is gone. The latest correction of a request's
page replaces the earlier one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsynth import envs
from deepsynth.atomic import write_file
from deepsynth.observability.audit import AuditLog, BackgroundWriter, safe_tag, stamp, stamped_id, utc

log = logging.getLogger("deepsynth.feedback")

MANIFEST = "manifest.jsonl"
CHAT_PREFIX = "chatcmpl-"  # a chat completion's id is this + the request id
InputFile = tuple[bytes, str, str | None]  # (bytes, name, declared content type), as the server received it


@dataclass
class FeedbackSettings:
    directory: Path
    keep_inputs_hours: float = 24.0  # 0: inputs are not kept (feedback must carry its image)
    max_inputs: int = 1000
    max_count: int = 10000
    max_age_days: float = 365.0
    background: bool = True  # write kept inputs on a thread (a request never waits for the disk)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        checks = (
            ("DEEPSYNTH_FEEDBACK_KEEP_INPUTS_HOURS", self.keep_inputs_hours >= 0, ">= 0"),
            ("DEEPSYNTH_FEEDBACK_MAX_INPUTS", self.max_inputs >= 1, ">= 1"),
            ("DEEPSYNTH_FEEDBACK_MAX_COUNT", self.max_count >= 1, ">= 1"),
            ("DEEPSYNTH_FEEDBACK_MAX_AGE_DAYS", self.max_age_days > 0, "> 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}")

    @classmethod
    def from_env(cls, env: Mapping[str, str], directory: str | Path | None = None) -> FeedbackSettings | None:
        """Settings from the feedback variables (``directory`` overrides ``DEEPSYNTH_FEEDBACK_DIR``); None
        when neither names a directory (feedback off)."""
        directory = directory or envs.read("DEEPSYNTH_FEEDBACK_DIR", env)
        if not directory:
            return None
        return cls(
            directory=Path(directory),
            keep_inputs_hours=envs.read("DEEPSYNTH_FEEDBACK_KEEP_INPUTS_HOURS", env),
            max_inputs=envs.read("DEEPSYNTH_FEEDBACK_MAX_INPUTS", env),
            max_count=envs.read("DEEPSYNTH_FEEDBACK_MAX_COUNT", env),
            max_age_days=envs.read("DEEPSYNTH_FEEDBACK_MAX_AGE_DAYS", env),
        )


@dataclass
class KeptInput:
    """The files of one served request, with the page each of its pages came from (``pages[i]`` is the
    ``(file index, page in that file)`` of the request's page ``i + 1``)."""

    request_id: str
    created: float
    files: list[InputFile]
    pages: list[tuple[int, int]]
    dpi: float | None = None
    doc_type: str | None = None
    model: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class FeedbackStore:
    """Labelled corrections (``manifest.jsonl`` + ``images/``), the inputs they may refer to, retention, audit."""

    def __init__(
        self, settings: FeedbackSettings, *, clock: Callable[[], float] = time.time, admin: bool = False
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.root = settings.directory
        self.manifest = self.root / MANIFEST
        self.images_dir = self.root / "images"
        self.inputs_dir = self.root / "inputs"
        self.audit = AuditLog(self.root / "audit.jsonl", clock)
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], dict[str, tuple[dict[str, Any], str]]] | None = None
        self._writer = BackgroundWriter(  # at most 16 requests' files wait in memory
            self._write_input, "deepsynth-feedback", 16, background=settings.background and not admin
        )
        if admin:  # the CLI on a server's store: no retention with default settings, no writer
            if not self.manifest.is_file():
                raise FileNotFoundError(f"no feedback store at {self.root} (no {MANIFEST})")
            return
        for d in (self.images_dir, self.inputs_dir):
            d.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self.manifest.exists():
                write_file(self.manifest, b"")
        self.audit.write(
            "open",
            keep_inputs_hours=settings.keep_inputs_hours,
            max_inputs=settings.max_inputs,
            max_count=settings.max_count,
            max_age_days=settings.max_age_days,
        )
        self.enforce_retention()

    @classmethod
    def open_existing(cls, directory: str | Path) -> FeedbackStore:
        """Open a server's store to list or delete (audited); applies no retention of its own."""
        return cls(FeedbackSettings(directory=Path(directory), background=False), admin=True)

    # ------------------------------------------------------------------ inputs of served requests
    @property
    def keeps_inputs(self) -> bool:
        return self.settings.keep_inputs_hours > 0

    def keep_input(
        self,
        request_id: str,
        files: list[InputFile],
        pages: list[tuple[int, int]],
        *,
        model: str,
        doc_type: str | None = None,
        dpi: float | None = None,
    ) -> None:
        """Keep a served request's files for later feedback (on the writer thread; never blocks)."""
        if not self.keeps_inputs:
            return
        self._writer.submit((request_id, list(files), list(pages), model, doc_type, dpi, self.clock()))

    def find_input(self, request_id: str) -> KeptInput | None:
        """The newest kept input of ``request_id`` (also given as a chat completion id), or None."""
        self.flush()
        for rid in dict.fromkeys((request_id, request_id.removeprefix(CHAT_PREFIX))):
            found = sorted(self.inputs_dir.glob(f"*_{safe_tag(rid)}"))
            if found and (meta_path := found[-1] / "meta.json").is_file():
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                files = [((found[-1] / f["file"]).read_bytes(), f["name"], f["mime"]) for f in meta["files"]]
                pages = [(int(f), int(p)) for f, p in meta["pages"]]
                return KeptInput(
                    meta["request_id"], meta["created_ts"], files, pages, meta.get("dpi"),
                    meta.get("doc_type"), meta.get("model"), meta,
                )  # fmt: skip
        return None

    def inputs(self) -> list[dict[str, Any]]:
        """``meta.json`` of every kept input, oldest first."""
        return [
            json.loads(m.read_text(encoding="utf-8")) for m in sorted(self.inputs_dir.glob("*/meta.json"))
        ]

    # ------------------------------------------------------------------ labelled feedback
    def add(
        self,
        text: str,
        doc_type: str,
        image: bytes,
        image_ext: str,
        *,
        request_id: str | None = None,
        page: int | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Store one correction (durably, before returning) and its page image; returns the manifest line."""
        created = self.clock()
        rid = safe_tag(request_id) if request_id else None
        with self._locked():
            rows = self._read()
            ids = {r["id"] for r in rows}
            sid = (
                f"fb-{rid}-p{page}"
                if rid
                else f"fb-{stamped_id(created, 'image', lambda i: f'fb-{i}' in ids)}"
            )
            name = stamped_id(
                created, safe_tag(sid), lambda i: (self.images_dir / f"{i}.{image_ext}").exists()
            )
            image_name = f"images/{name}.{image_ext}"
            write_file(self.root / image_name, image)
            row = {
                "id": sid,
                "image": image_name,
                "text": text,
                "doc_type": doc_type,
                "page_id": rid or sid,
                "request_id": rid,
                "page": page,
                "model": model,
                "source": "feedback",
                "created": utc(created),
                "created_ts": created,
            }
            replaced = [r for r in rows if r["id"] == sid]
            kept, expired, excess = self._retain([r for r in rows if r["id"] != sid] + [row], created)
            try:
                self._write(kept)
            except BaseException:  # the old manifest stands; no image without its line
                (self.root / image_name).unlink(missing_ok=True)
                raise
            self.audit.write(
                "store", feedback_id=sid, request_id=rid, page=page, doc_type=doc_type, model=model,
                files=[MANIFEST, image_name], bytes=len(image), chars=len(text),
            )  # fmt: skip
            self._forget(replaced, "superseded")
            self._forget(expired, "max_age")
            self._forget(excess, "max_count")
        self._retain_inputs(created)
        return row

    def feedback(self) -> list[dict[str, Any]]:
        """The stored corrections (manifest lines), oldest first."""
        return self._read()

    def delete(self, feedback_ids: list[str], reason: str = "manual") -> list[str]:
        """Delete corrections (line + image), audited; returns the ids that were found."""
        wanted = set(feedback_ids)
        with self._locked():
            rows = self._read()
            gone = [r for r in rows if r["id"] in wanted]
            if gone:
                self._write([r for r in rows if r["id"] not in wanted])
                self._forget(gone, reason)
        return [r["id"] for r in gone]

    def delete_request(self, request_id: str, reason: str = "manual") -> tuple[list[str], int]:
        """Delete every correction and kept input of ``request_id``: (feedback ids, inputs deleted)."""
        rid = safe_tag(request_id.removeprefix(CHAT_PREFIX))
        ids = self.delete([r["id"] for r in self._read() if r.get("request_id") == rid], reason)
        inputs = sorted(self.inputs_dir.glob(f"*_{rid}"))
        self._delete_inputs(inputs, reason)
        return ids, len(inputs)

    def enforce_retention(self, now: float | None = None) -> int:
        """Apply the age and count limits to corrections and kept inputs (oldest first); returns how many went."""
        now = self.clock() if now is None else now
        with self._locked():
            kept, expired, excess = self._retain(self._read(), now)
            if expired or excess:
                self._write(kept)
                self._forget(expired, "max_age")
                self._forget(excess, "max_count")
        return len(expired) + len(excess) + self._retain_inputs(now)

    def _retain(self, rows: list[dict[str, Any]], now: float) -> tuple[list[dict[str, Any]], ...]:
        """``rows`` split into (kept, older than max_age, beyond max_count), each oldest first."""
        rows = sorted(rows, key=lambda r: r["created_ts"])
        expired = [r for r in rows if now - r["created_ts"] > self.settings.max_age_days * 86400.0]
        kept = rows[len(expired) :]
        excess = kept[: max(0, len(kept) - self.settings.max_count)]
        return kept[len(excess) :], expired, excess

    def _retain_inputs(self, now: float) -> int:
        """Delete kept inputs past ``keep_inputs_hours`` and beyond ``max_inputs``: their names start with their
        creation stamp, so names sort by age and compare with the cut-off's stamp (no parsing, no stat)."""
        names = sorted(n for n in os.listdir(self.inputs_dir) if not n.startswith("."))
        cutoff = stamp(now - self.settings.keep_inputs_hours * 3600.0)
        old = [n for n in names if n < cutoff]
        rest = names[len(old) :]
        over = rest[: max(0, len(rest) - self.settings.max_inputs)]
        self._delete_inputs([self.inputs_dir / n for n in old], "max_age", sync=False)
        self._delete_inputs([self.inputs_dir / n for n in over], "max_inputs", sync=False)
        return len(old) + len(over)

    def flush(self) -> None:
        """Wait until every kept input handed over so far is written."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    # ------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's threads and other processes (the CLI) take turns on the manifest."""
        with self._lock, open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self) -> list[dict[str, Any]]:
        """The manifest's rows; parsed again only when the file changed since this store last read or wrote
        it (another process, e.g. the CLI, replaced it), so a correction costs no parse of all the others."""
        try:
            st = os.stat(self.manifest)
        except FileNotFoundError:
            return []
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache
        if cached is not None and cached[0] == signature:
            return [row for row, _ in cached[1].values()]
        lines = [x for x in self.manifest.read_text(encoding="utf-8").splitlines() if x]
        parsed = {(row := json.loads(x))["id"]: (row, x) for x in lines}
        self._cache = (signature, parsed)
        return [row for row, _ in parsed.values()]

    def _write(self, rows: list[dict[str, Any]]) -> None:
        known = self._cache[1] if self._cache is not None else {}
        lines = {
            r["id"]: (
                r,
                known[r["id"]][1]
                if r["id"] in known and known[r["id"]][0] is r
                else json.dumps(r, ensure_ascii=False),
            )
            for r in rows
        }
        write_file(self.manifest, "".join(line + "\n" for _, line in lines.values()).encode())
        st = os.stat(self.manifest)
        self._cache = ((st.st_ino, st.st_mtime_ns, st.st_size), lines)

    def _forget(self, rows: list[dict[str, Any]], reason: str) -> None:
        """Remove the images of rows already gone from the manifest, and audit it."""
        for r in rows:
            (self.root / r["image"]).unlink(missing_ok=True)
            self.audit.write("delete", feedback_id=r["id"], request_id=r.get("request_id"), reason=reason,
                             files=[r["image"]])  # fmt: skip

    def _write_input(
        self,
        request_id: str,
        files: list[InputFile],
        pages: list[tuple[int, int]],
        model: str,
        doc_type: str | None,
        dpi: float | None,
        created: float,
    ) -> None:
        name = stamped_id(created, safe_tag(request_id), lambda i: (self.inputs_dir / i).exists())
        staging = self.inputs_dir / f".{name}.tmp"  # renamed into place complete: find_input never sees half
        staging.mkdir(parents=True)
        described = []
        for i, (data, fname, mime) in enumerate(files):  # not fsynced: a kept input is best effort
            (staging / f"file{i}").write_bytes(data)
            described.append({"file": f"file{i}", "name": fname, "mime": mime, "bytes": len(data)})
        meta = {
            "request_id": request_id, "created": utc(created), "created_ts": created, "model": model,
            "doc_type": doc_type, "dpi": dpi, "files": described, "pages": [list(p) for p in pages],
        }  # fmt: skip
        (staging / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        staging.rename(self.inputs_dir / name)
        self.audit.write("keep_input", sync=False, input_id=name, request_id=safe_tag(request_id), model=model,
                         files=len(files), bytes=sum(d["bytes"] for d in described))  # fmt: skip
        self._retain_inputs(created)

    def _delete_inputs(self, dirs: list[Path], reason: str, *, sync: bool = True) -> None:
        """Remove kept inputs, audited (``sync=False`` for routine retention, which runs per request)."""
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
            self.audit.write("delete_input", sync=sync, input_id=d.name, reason=reason)
