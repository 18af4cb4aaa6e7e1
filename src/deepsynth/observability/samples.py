"""Privacy-safe sample store: keep a small, redacted fraction of requests for auditing. **Off by default.**

Turned on by ``DEEPSYNTH_SAMPLES_DIR``; the other variables tune it:

==================================  =========  ====================================================
variable                            default    meaning
==================================  =========  ====================================================
``DEEPSYNTH_SAMPLES_DIR``           (unset)    where samples go; unset = nothing is ever written
``DEEPSYNTH_SAMPLES_RATE``          ``0.01``   fraction of requests stored (0..1)
``DEEPSYNTH_SAMPLES_MAX_COUNT``     ``1000``   keep at most this many (oldest deleted first)
``DEEPSYNTH_SAMPLES_MAX_AGE_DAYS``  ``7``      delete samples older than this (fractions allowed)
``DEEPSYNTH_SAMPLES_REDACT``        ``1``      redact emails/phones/IBANs/card numbers in the text
``DEEPSYNTH_SAMPLES_IMAGE``         ``blur``   ``thumbnail`` | ``blur`` | ``omit``
``DEEPSYNTH_SAMPLES_THUMBNAIL_PX``  ``256``    longest side of the stored image
``DEEPSYNTH_SAMPLES_SEED``          (unset)    seed the sampling decision (reproducible tests)
==================================  =========  ====================================================

Layout: ``records/<sample_id>.json`` (redacted text, timings, model id, image file name),
``images/<sample_id>.jpg`` and ``audit.jsonl``, an append-only log of every store and deletion (ids, files,
sizes, redaction counts, reasons; never the text). Writing happens on a background thread so a request never
waits for the disk; :meth:`SampleStore.flush` waits for pending writes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsynth import envs
from deepsynth.atomic import write_file
from deepsynth.observability.audit import AuditLog, BackgroundWriter, created_of, safe_tag, stamped_id, utc
from deepsynth.observability.redaction import redact

log = logging.getLogger("deepsynth.samples")

IMAGE_MODES = ("thumbnail", "blur", "omit")


class NoopSampleStore:
    """The default: stores nothing, writes nothing."""

    enabled = False

    def maybe_store(
        self, request_id: str, image: Any, text: str, timings: Mapping[str, float], model_id: str
    ) -> bool:
        return False

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class SampleSettings:
    directory: Path
    rate: float = 0.01
    max_count: int = 1000
    max_age_seconds: float = 7 * 86400.0
    redact: bool = True
    image_mode: str = "blur"
    thumbnail_px: int = 256
    seed: int | None = None
    background: bool = True

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"sample rate (DEEPSYNTH_SAMPLES_RATE) must be within 0..1, got {self.rate}")
        if self.max_count < 1:
            raise ValueError(
                f"sample max count (DEEPSYNTH_SAMPLES_MAX_COUNT) must be >= 1, got {self.max_count}"
            )
        if self.max_age_seconds <= 0:
            raise ValueError(
                f"sample max age (DEEPSYNTH_SAMPLES_MAX_AGE_DAYS) must be > 0, got {self.max_age_seconds}"
            )
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(
                f"sample image mode (DEEPSYNTH_SAMPLES_IMAGE) must be one of {', '.join(IMAGE_MODES)}, got {self.image_mode!r}"
            )
        if self.thumbnail_px < 16:
            raise ValueError(
                f"sample thumbnail size (DEEPSYNTH_SAMPLES_THUMBNAIL_PX) must be >= 16 px, got {self.thumbnail_px}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SampleSettings | None:
        """Settings from ``DEEPSYNTH_SAMPLES_*``; None when ``DEEPSYNTH_SAMPLES_DIR`` is unset (store off)."""
        directory = envs.read("DEEPSYNTH_SAMPLES_DIR", env)
        if not directory:
            return None

        def get(name: str) -> Any:
            return envs.read(f"DEEPSYNTH_SAMPLES_{name}", env)

        try:
            return cls(
                directory=Path(directory),
                rate=get("RATE"),
                max_count=get("MAX_COUNT"),
                max_age_seconds=get("MAX_AGE_DAYS") * 86400.0,
                redact=get("REDACT"),
                image_mode=get("IMAGE").lower(),
                thumbnail_px=get("THUMBNAIL_PX"),
                seed=get("SEED"),
            )
        except ValueError as exc:
            raise ValueError(f"invalid DEEPSYNTH_SAMPLES_* setting: {exc}") from None


def prepare_image(image: Any, mode: str, max_px: int) -> bytes | None:
    """JPEG bytes of a thumbnail (``thumbnail``), a blurred thumbnail (``blur``) or None (``omit``).

    The blur radius scales with the thumbnail so printed text is unreadable while layout stays visible.
    """
    if mode == "omit" or image is None:
        return None
    from PIL import Image, ImageFilter

    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    elif not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    thumb = image.convert("RGB")
    thumb.thumbnail((max_px, max_px))
    if mode == "blur":
        thumb = thumb.filter(ImageFilter.GaussianBlur(radius=max(3.0, max(thumb.size) / 40.0)))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


class SampleStore:
    """Samples requests at ``rate``, redacts, writes records + images, enforces retention, keeps an audit log."""

    enabled = True

    def __init__(
        self,
        settings: SampleSettings,
        *,
        clock: Callable[[], float] = time.time,
        on_store: Callable[[], None] | None = None,
        on_delete: Callable[[str, int], None] | None = None,
        admin: bool = False,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._on_store = on_store
        self._on_delete = on_delete
        self._rng = random.Random(settings.seed)
        self._lock = threading.Lock()
        self.root = settings.directory
        self.records_dir = self.root / "records"
        self.images_dir = self.root / "images"
        self.audit_path = self.root / "audit.jsonl"
        self._audit = AuditLog(self.audit_path, clock).write
        self._writer = BackgroundWriter(
            self._write, "deepsynth-samples", background=settings.background and not admin
        )
        if admin:  # someone else's store: no retention pass with our settings, no writer, no "open" entry
            if not self.records_dir.is_dir():
                raise FileNotFoundError(f"no sample store at {self.root} (no records/ directory)")
            return
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._audit("open", rate=settings.rate, max_count=settings.max_count,
                    max_age_seconds=settings.max_age_seconds, redact=settings.redact,
                    image_mode=settings.image_mode)  # fmt: skip
        self.enforce_retention()

    @classmethod
    def open_existing(cls, directory: str | Path) -> SampleStore:
        """Open a store that a server writes to, to list or delete samples (deletions are audited). Unlike the
        constructor it applies no retention, so default settings never delete what the server keeps."""
        return cls(SampleSettings(directory=Path(directory), rate=0.0, background=False), admin=True)

    # ------------------------------------------------------------------ public API
    def maybe_store(
        self, request_id: str, image: Any, text: str, timings: Mapping[str, float], model_id: str
    ) -> bool:
        """Decide (seeded random, at ``rate``) whether to keep this request; True if it was accepted."""
        with self._lock:
            if self._rng.random() >= self.settings.rate:
                return False
        return self._writer.submit((request_id, image, text, dict(timings), model_id, self.clock()))

    def flush(self) -> None:
        """Wait until every accepted sample is written."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def list_samples(self) -> list[dict[str, Any]]:
        """Stored records, oldest first."""
        return [json.loads(p.read_text()) for p in sorted(self.records_dir.glob("*.json"))]

    def delete(self, sample_id: str, reason: str = "manual") -> bool:
        """Delete one sample (record + image) and audit it."""
        rec = self.records_dir / f"{sample_id}.json"
        if not rec.is_file():
            return False
        self._delete([rec], reason)
        return True

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete samples older than ``max_age`` and beyond ``max_count`` (oldest first); returns how many."""
        now = self.clock() if now is None else now
        records = sorted(self.records_dir.glob("*.json"))  # names start with a UTC timestamp → chronological
        expired = [p for p in records if now - _created(p) > self.settings.max_age_seconds]
        gone = set(expired)
        kept = [p for p in records if p not in gone]
        excess = kept[: max(0, len(kept) - self.settings.max_count)]
        self._delete(expired, "max_age")
        self._delete(excess, "max_count")
        return len(expired) + len(excess)

    # ------------------------------------------------------------------ internals
    def _write(
        self, request_id: str, image: Any, text: str, timings: dict[str, float], model_id: str, created: float
    ) -> None:
        s = self.settings
        rid = safe_tag(request_id)
        sample_id = stamped_id(created, rid, lambda i: (self.records_dir / f"{i}.json").exists())
        counts: dict[str, int] = {}
        if s.redact:
            text, counts = redact(text)
        files = []
        image_bytes = prepare_image(image, s.image_mode, s.thumbnail_px)
        image_name = None
        if image_bytes is not None:
            image_name = f"images/{sample_id}.jpg"
            write_file(self.root / image_name, image_bytes)
            files.append(image_name)
        record = {
            "sample_id": sample_id,
            "request_id": rid,
            "model_id": model_id,
            "created": utc(created),
            "created_ts": created,
            "text": text,
            "redacted": s.redact,
            "redactions": counts,
            "timings_ms": {str(k): round(float(v) * 1000.0, 3) for k, v in timings.items()},
            "image": image_name,
            "image_mode": s.image_mode,
        }
        body = json.dumps(record, ensure_ascii=False, indent=1).encode()
        write_file(self.records_dir / f"{sample_id}.json", body)
        files.insert(0, f"records/{sample_id}.json")
        self._audit(
            "store",
            sample_id=sample_id,
            request_id=rid,
            model_id=model_id,
            files=files,
            bytes=len(body) + len(image_bytes or b""),
            redacted=s.redact,
            redactions=counts,
            image_mode=s.image_mode,
        )
        if self._on_store is not None:
            self._on_store()
        self.enforce_retention(now=created)

    def _delete(self, records: list[Path], reason: str) -> None:
        for rec in records:
            sample_id = rec.stem
            files = []
            for path in (rec, self.images_dir / f"{sample_id}.jpg"):
                if path.exists():
                    path.unlink()
                    files.append(str(path.relative_to(self.root)))
            self._audit("delete", sample_id=sample_id, reason=reason, files=files)
        if records and self._on_delete is not None:
            self._on_delete(reason, len(records))


def _created(record: Path) -> float:
    """Creation time (UTC epoch seconds) from a record's file name ``YYYYmmddTHHMMSSffffffZ_<id>.json``."""
    created = created_of(record.name)
    return record.stat().st_mtime if created is None else created


def sample_store_from_env(
    env: Mapping[str, str] | None = None,
    *,
    on_store: Callable[[], None] | None = None,
    on_delete: Callable[[str, int], None] | None = None,
) -> NoopSampleStore | SampleStore:
    """A :class:`SampleStore` when ``DEEPSYNTH_SAMPLES_DIR`` is set, else the no-op store."""
    settings = SampleSettings.from_env(os.environ if env is None else env)
    if settings is None:
        return NoopSampleStore()
    return SampleStore(settings, on_store=on_store, on_delete=on_delete)
