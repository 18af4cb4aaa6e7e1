"""Sharded results with a completion manifest: a rerun resumes per shard, never duplicating or dropping a record.

A job's input is cut into numbered shards of consecutive records. A finished shard is written whole to
``part-NNNNNN.jsonl`` (temp file, fsync, rename) and only then listed in ``manifest.jsonl`` with its record
count and sha256. A shard file without its manifest line (a crash in between) is simply done again, and a
manifest line whose file is missing or altered is ignored, so every record is in exactly one listed shard.
``job.json`` fingerprints the job (command, engine, inputs, shard size): a rerun with other settings into the
same directory is refused instead of mixing two jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
JOB = "job.json"


class ShardStoreError(ValueError):
    """The shard directory holds another job's results (or is unreadable)."""


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class ShardStore:
    """The shard files and manifest of one job in ``root``."""

    def __init__(self, root: str | Path, job: dict[str, Any]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        job_path = self.root / JOB
        if job_path.is_file():
            previous = json.loads(job_path.read_text(encoding="utf-8"))
            if previous != job:
                changed = sorted(k for k in set(previous) | set(job) if previous.get(k) != job.get(k))
                raise ShardStoreError(
                    f"{self.root} holds results of another job (different {', '.join(changed)}); "
                    "use another output or delete it"
                )
        else:
            _fsync_write(job_path, (json.dumps(job, indent=2, ensure_ascii=False) + "\n").encode())
        self.done: dict[int, int] = self._read_manifest()

    def _part(self, shard: int) -> Path:
        return self.root / f"part-{shard:06d}.jsonl"

    def _read_manifest(self) -> dict[int, int]:
        done: dict[int, int] = {}
        path = self.root / MANIFEST
        if not path.is_file():
            return done
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a torn last line: that shard is done again
                continue
            part = self._part(entry["shard"])
            if part.is_file() and hashlib.sha256(part.read_bytes()).hexdigest() == entry["sha256"]:
                done[entry["shard"]] = entry["records"]
        return done

    @property
    def n_records(self) -> int:
        return sum(self.done.values())

    def write(self, shard: int, records: list[dict[str, Any]]) -> None:
        """Write one finished shard, then list it in the manifest."""
        if shard in self.done:
            raise ShardStoreError(f"shard {shard} of {self.root} is already complete")
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        _fsync_write(self._part(shard), data)
        entry = {"shard": shard, "records": len(records), "sha256": hashlib.sha256(data).hexdigest()}
        with (self.root / MANIFEST).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done[shard] = len(records)

    def records(self, shards: Iterable[int] | None = None) -> Iterator[dict[str, Any]]:
        """Records of the completed shards, in shard order."""
        for shard in sorted(self.done if shards is None else shards):
            with self._part(shard).open(encoding="utf-8") as fh:
                for line in fh:
                    yield json.loads(line)

    def merge(self, dest: str | Path) -> int:
        """Write every completed shard's records, in order, to ``dest`` (atomically); returns their count."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        n = 0
        with tmp.open("wb") as out:
            for shard in sorted(self.done):
                data = self._part(shard).read_bytes()
                out.write(data)
                n += data.count(b"\n")
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(dest)
        return n
