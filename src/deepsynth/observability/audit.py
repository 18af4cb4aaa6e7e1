"""What the stores of personal data share (the sample store and the feedback store, docs/privacy.md): an
append-only audit log, and ids that start with their UTC creation time so names sort chronologically."""

from __future__ import annotations

import calendar
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("deepsynth.samples")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_STAMP = "%Y%m%dT%H%M%S"


def utc(ts: float) -> str:
    """``ts`` (epoch seconds) as ``YYYY-mm-ddTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def safe_tag(text: str, default: str = "request") -> str:
    """``text`` (a request id) as a file-name-safe tag of at most 64 characters."""
    return _SAFE.sub("_", str(text))[:64] or default


def stamp(ts: float) -> str:
    """``ts`` as ``YYYYmmddTHHMMSSffffffZ``: fixed width, so stamps (and ids starting with one) sort by time."""
    sec, us = divmod(int(round(ts * 1e6)), 1_000_000)
    return f"{time.strftime(_STAMP, time.gmtime(sec))}{us:06d}Z"


def stamped_id(created: float, tag: str, taken: Callable[[str], bool]) -> str:
    """``YYYYmmddTHHMMSSffffffZ_<tag>``: the first such id at or after ``created`` that is not ``taken`` (several
    pages of one request can arrive within one microsecond: ids stay unique and ordered)."""
    micros = int(round(created * 1e6))
    while True:
        candidate = f"{stamp(micros / 1e6)}_{tag}"
        if not taken(candidate):
            return candidate
        micros += 1


def created_of(name: str) -> float | None:
    """The creation time (epoch seconds) a :func:`stamped_id` starts with; None if ``name`` has none."""
    stamp = name.split("_", 1)[0]
    try:
        return calendar.timegm(time.strptime(stamp[:15], _STAMP)) + int(stamp[15:21]) / 1e6
    except ValueError:
        return None


class AuditLog:
    """``audit.jsonl``: one JSON line per action (store, delete with its reason, ...), fsynced, never the text."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()

    def write(self, action: str, *, sync: bool = True, **fields: Any) -> None:
        """Append one entry; ``sync=False`` leaves it to the OS to reach the disk (for high-rate entries)."""
        line = json.dumps({"ts": utc(self.clock()), "action": action, **fields}, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()]


class BackgroundWriter:
    """Runs ``write(*item)`` for each submitted item on one daemon thread, so a request never waits for the
    disk; a failed write is logged, never raised. When ``maxsize`` items are pending, new ones are dropped
    (counted in ``dropped``) with a warning. ``background=False`` writes at once, in the caller's thread."""

    def __init__(
        self, write: Callable[..., None], name: str, maxsize: int = 64, *, background: bool = True
    ) -> None:
        self._write = write
        self.name = name
        self.dropped = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=maxsize)
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()

    def submit(self, item: tuple) -> bool:
        """Hand ``item`` over; False when it was dropped (queue full or writer closed)."""
        if self._thread is None:
            self._write(*item)
            return True
        try:
            if self._queue is None:
                raise queue.Full
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.warning(f"{self.name}: queue full, item dropped", extra={"dropped": self.dropped})
            return False
        return True

    def flush(self) -> None:
        """Wait until every submitted item is written."""
        if self._queue is not None:
            self._queue.join()

    def close(self) -> None:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._queue = None

    def _work(self) -> None:
        assert self._queue is not None
        q = self._queue
        while True:
            item = q.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except Exception:  # a failed write must never take the service down
                log.exception(f"{self.name}: write failed")
            finally:
                q.task_done()
