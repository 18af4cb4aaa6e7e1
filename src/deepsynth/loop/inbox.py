"""The inbox: a watched folder where each file or folder is one source of labelled samples in any format the
data layer reads. New or changed entries are read once; bad ones are reported (with the reason) and skipped.

Names starting with ``.`` or ending in ``.part`` / ``.tmp`` are still being written and are left for later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsynth.data import DataReport, Sample, open_sources
from deepsynth.loop.state import LoopState, doc_type

_IN_PROGRESS = (".part", ".tmp")


@dataclass
class InboxScan:
    """What one scan found: entries read (with their per-type counts) and entries refused."""

    read: dict[str, dict[str, int]] = field(default_factory=dict)  # entry -> type -> new samples
    bad: dict[str, str] = field(default_factory=dict)  # entry -> reason
    skipped_samples: list[dict[str, str]] = field(default_factory=list)


def entries(inbox: str | Path) -> list[Path]:
    """The inbox's complete entries, sorted by name (arrival order when names carry a date or counter)."""
    root = Path(inbox)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and not p.name.endswith(_IN_PROGRESS)
    )


def fingerprint(path: Path) -> str:
    """Names, sizes and modification times of the files under ``path`` (changes when an entry changes)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def scan(inbox: str | Path, state: LoopState, holdout_key: str, fraction: float, seed: int) -> InboxScan:
    """Read new or changed inbox entries into ``state`` (samples counted once by id, holdout decided)."""
    out = InboxScan()
    for path in entries(inbox):
        fp = fingerprint(path)
        known = state.entries.get(path.name)
        if known is not None and known["fingerprint"] == fp:
            continue
        report = DataReport()
        try:
            samples = list(open_sources([str(path)], report=report))
        except Exception as exc:  # an unreadable source of any kind is reported, never fatal
            reason = f"{type(exc).__name__}: {exc}"
            state.entries[path.name] = {"fingerprint": fp, "status": "bad", "error": reason}
            out.bad[path.name] = reason
            continue
        if not samples:
            kinds = report.skipped_by_kind()
            reason = f"no usable sample ({', '.join(f'{k}: {n}' for k, n in kinds.items()) or 'empty'})"
            state.entries[path.name] = {"fingerprint": fp, "status": "bad", "error": reason}
            out.bad[path.name] = reason
            out.skipped_samples.extend(report.skipped)
            continue
        counts: dict[str, int] = {}
        for s in samples:
            t = doc_type(s)
            before = state.type(t).labelled
            state.add_sample(s, holdout_key, fraction, seed)
            counts[t] = counts.get(t, 0) + state.type(t).labelled - before
        entry: dict[str, Any] = {
            "fingerprint": fp,
            "status": "ok",
            "samples": len(samples),
            "by_type": counts,
        }
        if report.n_skipped:
            entry["skipped"] = report.skipped[:50]
            entry["n_skipped"] = report.n_skipped
            out.skipped_samples.extend(report.skipped)
        state.entries[path.name] = entry
        out.read[path.name] = counts
    return out


def good_sources(inbox: str | Path, state: LoopState) -> list[str]:
    """Specs of the inbox entries read successfully (in name order), for training and holdout evaluation."""
    return [str(p) for p in entries(inbox) if state.entries.get(p.name, {}).get("status") == "ok"]


def deliver(inbox: str | Path, name: str, samples: Iterable[Sample], fmt: str = "parquet") -> Path:
    """Write ``samples`` into the inbox as entry ``name`` in ``fmt`` (any of the data layer's writers), under
    ``name.part`` first and renamed when complete, so a scan never reads half a batch."""
    from deepsynth.data.writers import open_writer

    inbox = Path(inbox)
    final = inbox / name
    if final.exists():
        raise FileExistsError(f"inbox entry {final} already exists")
    staging = inbox / f"{name}.part"
    with open_writer(fmt, staging) as writer:
        for s in samples:
            writer.write(s)
            s.release()
    staging.rename(final)
    return final
