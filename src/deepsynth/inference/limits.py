"""Every resource limit of the serving path in one typed object, and the page-size arithmetic it needs.

:class:`ServingLimits` is the single place where a limit lives: ``deepsynth serve`` builds its options (and
their ``--help``) from its fields, ``GET /v1/models`` shows it, the input decoder, the PDF renderer and the
model process read it. Limits are checked before the expensive work they protect: image sizes from the file
header before decoding, PDF page sizes from the page box and DPI before rendering, and the size the *model*
will see (after the engine's own resize, see :class:`InputGeometry`) before anything is queued.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


def _limit(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServingLimits:
    """Resource budgets of one server (every field is a `deepsynth serve` option of the same name)."""

    max_upload_mb: float = _limit(20.0, "Request body size in MB (larger: 413 upload_too_large).")
    max_pages: int = _limit(50, "Pages per request: images + PDF pages + TIFF frames (more: 413).")
    max_pixels: int = _limit(
        40_000_000,
        "Pixels of one decoded page, read from the image header before decoding (larger: 413); "
        "a PDF page that would render larger is rendered at a lower DPI instead.",
    )
    max_request_pixels: int = _limit(
        200_000_000, "Decoded pixels of all pages of one request, checked before decoding/rendering (413)."
    )
    max_model_pixels: int = _limit(
        8_000_000,
        "Pixels of one page as the model sees it, after the engine's own resize (a line recogniser scales "
        "to height 48, the page detector's short side to 736); larger: 413 before the model runs.",
    )
    max_aspect_ratio: float = _limit(
        200.0, "Longest/shortest side of a page (real text lines are below 80:1); larger: 413."
    )
    min_side: int = _limit(4, "Shortest side of a page in pixels (smaller: 400).")
    pdf_dpi: float = _limit(150.0, "PDF rendering resolution (a request may ask for 36-600 with 'dpi').")
    request_timeout_s: float = _limit(
        300.0, "Whole-request time budget: queue + model (exceeded: 504 timeout)."
    )
    model_timeout_s: float = _limit(
        120.0,
        "Model time of one batch; when exceeded the model process is killed and restarted with its queue "
        "kept, and the batch's requests get 504 model_time_budget_exceeded (0: no limit).",
    )
    model_max_rss_mb: float = _limit(
        0.0,
        "Memory ceiling (resident MB) of the model process; above it the process is restarted with its "
        "queue kept (0: 3x its size after loading, at least +2048 MB).",
    )
    drain_timeout_s: float = _limit(
        30.0,
        "On SIGTERM: how long accepted requests may finish; then waiting clients get 503 shutting_down "
        "and the model process is stopped.",
    )

    @property
    def model_budget_s(self) -> float:
        """Model time allowed to one batch: ``model_timeout_s``, never more than the request timeout (its
        callers have given up by then); 0 when neither is set."""
        budgets = [t for t in (self.model_timeout_s, self.request_timeout_s) if t and t > 0]
        return min(budgets, default=0.0)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


class LimitExceeded(ValueError):
    """Work over one of the :class:`ServingLimits`; ``limit`` names the field, ``status`` / ``kind`` are the
    HTTP answer (413 ``limit_exceeded`` for a page, 504 ``model_timeout`` for a batch that ran too long)."""

    def __init__(self, limit: str, message: str, status: int = 413, kind: str = "limit_exceeded"):
        self.limit = limit
        self.status = status
        self.kind = kind
        super().__init__(f"{message} (limit {limit})")


# rapidocr 3.10's page pipeline (config.yaml): long side down to 2000, short side up to 30, then the
# detector scales the short side up to 736; each step rounds both sides to a multiple of 32.
_PAGE_MAX_SIDE, _PAGE_MIN_SIDE, _DET_SHORT_SIDE = 2000, 30, 736
_LINE_HEIGHT, _LINE_MIN_WIDTH = 48, 320  # deepsynth.models.ppocr.preprocess (rapidocr's resize_norm_img)


@dataclass(frozen=True)
class InputGeometry:
    """How an engine resizes a page before its network sees it: ``line`` (PP-OCR recogniser: height 48,
    width by aspect ratio), ``page`` (rapidocr's detector) or ``native`` (its own bounded resize, e.g. a
    VLM's image processor: only the decoded size counts)."""

    kind: Literal["line", "page", "native"] = "native"

    def model_size(self, width: int, height: int) -> tuple[int, int] | None:
        """(width, height) the network sees; None when the engine cannot resize it at all."""
        if self.kind == "line":
            return max(_LINE_MIN_WIDTH, math.ceil(_LINE_HEIGHT * width / height)), _LINE_HEIGHT
        if self.kind == "page":
            size: tuple[int, int] | None = (width, height)
            if max(width, height) > _PAGE_MAX_SIDE:
                size = _scaled(size, _PAGE_MAX_SIDE / max(width, height))
            if size is not None and min(size) < _PAGE_MIN_SIDE:
                size = _scaled(size, _PAGE_MIN_SIDE / min(size))
            if size is not None:  # the detector always rounds to multiples of 32
                size = _scaled(size, max(1.0, _DET_SHORT_SIDE / min(size)))
            return size
        return width, height

    def check(self, width: int, height: int, limits: ServingLimits, what: str) -> None:
        """Raise :class:`LimitExceeded` when a ``width`` x ``height`` page is over a budget."""
        ratio = max(width, height) / max(1, min(width, height))
        if ratio > limits.max_aspect_ratio:
            raise LimitExceeded(
                "max_aspect_ratio",
                f"{what} is {width}x{height} px, an aspect ratio of {ratio:.0f}:1; "
                f"at most {limits.max_aspect_ratio:g}:1 is accepted",
            )
        if self.kind == "native":
            return
        size = self.model_size(width, height)
        if size is None:
            raise LimitExceeded(
                "max_aspect_ratio",
                f"{what} is {width}x{height} px; the {self.kind} engine cannot resize it (too thin)",
            )
        if size[0] * size[1] > limits.max_model_pixels:
            raise LimitExceeded(
                "max_model_pixels",
                f"{what} is {width}x{height} px, which the {self.kind} engine resizes to {size[0]}x{size[1]} "
                f"= {size[0] * size[1] / 1e6:.1f} MP; at most {limits.max_model_pixels / 1e6:g} MP is accepted",
            )


def _scaled(size: tuple[int, int], ratio: float) -> tuple[int, int] | None:
    w, h = (round(int(side * ratio) / 32) * 32 for side in size)
    return (w, h) if w > 0 and h > 0 else None  # rapidocr raises ResizeImgError here


# engine family (or family:arg) -> how it resizes; families not listed resize within their own bounds
_GEOMETRY = {
    "rapidocr": "line",
    "rapidocr:line": "line",
    "rapidocr:page": "page",
    "ppocr": "line",
    "ppocr-onnx": "line",
    "ppocr-page": "page",
}


def engine_geometry(spec: str) -> InputGeometry:
    """The :class:`InputGeometry` of the engine a registry spec (or saved model directory) names."""
    from deepsynth.models.registry import MODEL_CARD

    family, _, arg = spec.partition(":")
    card = Path(spec) / MODEL_CARD
    if card.is_file():
        family, arg = json.loads(card.read_text()).get("family", ""), ""
    kind = _GEOMETRY.get(f"{family}:{arg}") or _GEOMETRY.get(family, "native")
    return InputGeometry(kind)  # type: ignore[arg-type]


@dataclass
class RequestBudget:
    """What one request (or one file of a batch job) may still use: pages and decoded pixels, counted as
    pages are admitted; each page is checked against the :class:`ServingLimits` and the engine's
    :class:`InputGeometry` before it is decoded or rendered."""

    limits: ServingLimits = field(default_factory=ServingLimits)
    geometry: InputGeometry = field(default_factory=InputGeometry)
    pages: int = 0
    pixels: int = 0

    def admit(self, width: int, height: int, what: str) -> None:
        """Count one ``width`` x ``height`` page, or raise :class:`LimitExceeded` naming the limit."""
        self.geometry.check(width, height, self.limits, what)
        if self.pixels + width * height > self.limits.max_request_pixels:
            raise LimitExceeded(
                "max_request_pixels",
                f"{what} ({width}x{height} px) brings the request to "
                f"{(self.pixels + width * height) / 1e6:.0f} MP of pages; at most "
                f"{self.limits.max_request_pixels / 1e6:g} MP per request is accepted",
            )
        self.pages += 1
        self.pixels += width * height
