"""``stats``: counts per dataset/language/subset/level plus text-length and (optionally) image-size figures."""

from __future__ import annotations

from typing import Any

from deepsynth.data.filters import SampleFilter
from deepsynth.data.images import DEFAULT_MAX_PIXELS
from deepsynth.data.open import open_user_sources
from deepsynth.data.report import DataReport


class _Running:
    """Count, mean, min and max of a stream of numbers in constant memory."""

    def __init__(self) -> None:
        self.n, self.total, self.lo, self.hi = 0, 0.0, None, None

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.lo = x if self.lo is None else min(self.lo, x)
        self.hi = x if self.hi is None else max(self.hi, x)

    def to_dict(self) -> dict[str, float | None]:
        return {"mean": round(self.total / self.n, 2) if self.n else None, "min": self.lo, "max": self.hi}


def compute_stats(
    specs: list[str],
    *,
    filter: SampleFilter | None = None,
    decode: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> tuple[DataReport, dict[str, Any]]:
    """Stream the sources once; with ``decode`` every image is decoded (catches corrupt ones, measures sizes)."""
    from tqdm import tqdm

    report = DataReport()
    chars, width, height = _Running(), _Running(), _Running()
    stream = open_user_sources(specs, filter=filter, report=report, decode=decode, max_pixels=max_pixels)
    for s in tqdm(stream, desc="stats", unit="sample", disable=not progress):
        chars.add(len(s.text))
        if decode:
            width.add(s.image.width)
            height.add(s.image.height)
            s.release()
    extra: dict[str, Any] = {"text_length": chars.to_dict()}
    if decode:
        extra.update(image_width=width.to_dict(), image_height=height.to_dict())
    top = report.charset.most_common()
    extra["rarest_chars"] = "".join(c for c, _ in top[-20:][::-1] if c.isprintable())
    return report, extra
