"""Read whole pages: the shipped PP-OCRv6 detector finds text lines, a line recogniser reads them, and the
lines are put in reading order (top to bottom; columns left to right).

Reading order is a recursive XY-cut that prefers columns: a block splits at a vertical gutter (an x-range no
box crosses, at least ``min_gutter`` line heights wide) when it has one; otherwise at horizontal gaps, where
consecutive bands that share a gutter are merged again so that two-column text is read column by column
while a full-width title above it stays first. Lines that share a row are read left to right.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from deepsynth.models.base import OCREngine, Prediction, char_tokens
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.ppocr.preprocess import to_bgr


@dataclass
class Box:
    index: int
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def height(self) -> float:
        return self.y1 - self.y0


def _gaps(intervals: list[tuple[float, float]], min_width: float) -> list[tuple[float, float]]:
    """Uncovered ranges between the union of ``intervals`` (inside their extent) at least ``min_width`` wide."""
    out: list[tuple[float, float]] = []
    ordered = sorted(intervals)
    reach = ordered[0][1]
    for start, end in ordered[1:]:
        if start - reach >= min_width:
            out.append((reach, start))
        reach = max(reach, end)
    return out


def _split_at(boxes: list[Box], gaps: list[tuple[float, float]], axis: str) -> list[list[Box]]:
    """Split boxes by the sorted ``gaps`` along ``axis`` (each box goes by its centre)."""
    groups: list[list[Box]] = [[] for _ in range(len(gaps) + 1)]
    for b in boxes:
        centre = (b.x0 + b.x1) / 2 if axis == "x" else (b.y0 + b.y1) / 2
        slot = sum(1 for _, end in gaps if centre >= end)
        groups[slot].append(b)
    return [g for g in groups if g]


def _column_gaps(boxes: list[Box], min_gutter: float) -> list[tuple[float, float]]:
    return _gaps([(b.x0, b.x1) for b in boxes], min_gutter) if len(boxes) > 1 else []


def _rows(boxes: list[Box]) -> list[Box]:
    """Leaf order: group boxes whose vertical extents overlap by half into rows; rows top-down, boxes left-right."""
    rows: list[list[Box]] = []
    for b in sorted(boxes, key=lambda b: (b.y0 + b.y1) / 2):
        row = rows[-1] if rows else None
        if row is not None:
            top, bottom = min(r.y0 for r in row), max(r.y1 for r in row)
            overlap = min(bottom, b.y1) - max(top, b.y0)
            if overlap > 0.5 * min(b.height, bottom - top):
                row.append(b)
                continue
        rows.append([b])
    return [b for row in rows for b in sorted(row, key=lambda b: b.x0)]


def reading_order(boxes: list[Box], min_gutter: float) -> list[Box]:
    """Boxes in reading order (recursive XY-cut preferring columns; see the module docstring)."""
    if len(boxes) <= 1:
        return list(boxes)
    columns = _column_gaps(boxes, min_gutter)
    if columns:
        return [b for part in _split_at(boxes, columns, "x") for b in reading_order(part, min_gutter)]
    bands = _split_at(boxes, _gaps([(b.y0, b.y1) for b in boxes], 0.0), "y")
    if len(bands) == 1:
        return _rows(boxes)
    blocks: list[list[Box]] = [bands[0]]
    for band in bands[1:]:
        merged = blocks[-1] + band
        if _column_gaps(merged, min_gutter) and (len(blocks[-1]) > 1 or _column_gaps(band, min_gutter)):
            blocks[-1] = merged
        else:
            blocks.append(band)
    if len(blocks) == 1 and not _column_gaps(blocks[0], min_gutter):
        return _rows(boxes)
    return [b for block in blocks for b in reading_order(block, min_gutter)]


def join_lines(lines: list[dict[str, Any]]) -> str:
    """Page text: lines on the same row joined by a space, rows by newlines."""
    parts: list[str] = []
    prev = None
    for line in lines:
        if prev is not None:
            x0, y0, _, y1 = line["bbox"]
            _, py0, px1, py1 = prev["bbox"]
            overlap = min(y1, py1) - max(y0, py0)
            same_row = overlap > 0.5 * min(y1 - y0, py1 - py0) and x0 >= px1 - 0.5 * (y1 - y0)
            parts.append(" " if same_row else "\n")
        parts.append(line["text"])
        prev = line
    return "".join(parts)


class PageReader:
    """OCREngine for page images: shipped PP-OCRv6 detector + any line recogniser, in reading order.

    ``recognizer`` is an OCREngine (e.g. a fine-tuned :class:`PPOCRAdapter`), an engine spec for the registry
    (``"ppocr:runs/x/best"``, ``"ppocr-onnx:model.onnx"``), or None for the shipped recogniser on onnxruntime.
    Lines read with confidence below ``min_confidence`` (rapidocr's default 0.5) or empty are left out.
    """

    def __init__(
        self,
        recognizer: OCREngine | str | None = None,
        *,
        min_confidence: float = 0.5,
        min_gutter: float = 0.75,
        box_thresh: float | None = None,
        unclip_ratio: float | None = None,
    ):
        from rapidocr import RapidOCR

        if recognizer is None or isinstance(recognizer, str):
            from deepsynth.models.registry import load_engine

            recognizer = load_engine(recognizer or "ppocr-onnx")
        self.recognizer = recognizer
        self.name = f"page:{getattr(recognizer, 'name', type(recognizer).__name__)}"
        self.min_confidence = min_confidence
        self.min_gutter = min_gutter
        self._det_kwargs = {
            k: v for k, v in {"box_thresh": box_thresh, "unclip_ratio": unclip_ratio}.items() if v
        }
        self._rapid = RapidOCR(
            params={"Global.log_level": "error", "Global.use_cls": False, "Global.use_rec": False}
        )

    def detect(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Text line quadrilaterals ``[n, 4, 2]`` in image pixels, and their detection scores."""
        bgr = to_bgr(image)
        out = self._rapid(bgr, use_det=True, use_cls=False, use_rec=False, **self._det_kwargs)
        if out.boxes is None or len(out.boxes) == 0:
            return np.zeros((0, 4, 2), np.float32), []
        return np.asarray(out.boxes, dtype=np.float32), [
            float(s) for s in (out.scores or [1.0] * len(out.boxes))
        ]

    def read(self, image: Image.Image | np.ndarray) -> Prediction:
        """One page → Prediction with ``lines`` [{text, bbox [x0,y0,x1,y1], polygon, confidence}] in order."""
        from rapidocr.utils.process_img import get_rotate_crop_image

        bgr = to_bgr(image)
        quads, scores = self.detect(bgr)
        if len(quads) == 0:
            return Prediction(
                text="", confidence=None, finished=True, lines=[], num_tokens=0, prompt_tokens=0
            )
        boxes = [
            Box(i, float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max()))
            for i, q in enumerate(quads)
        ]
        heights = sorted(b.height for b in boxes)
        order = reading_order(boxes, self.min_gutter * heights[len(heights) // 2])
        crops = [get_rotate_crop_image(bgr, copy.deepcopy(quads[b.index])) for b in order]
        # RGB images, as the OCREngine protocol says (a PP-OCR recogniser turns them back into the same BGR)
        preds = self.recognizer.recognize(
            [Image.fromarray(np.ascontiguousarray(c[:, :, ::-1])) for c in crops]
        )
        lines = []
        for b, pred in zip(order, preds, strict=True):
            if not pred.text.strip() or (
                pred.confidence is not None and pred.confidence < self.min_confidence
            ):
                continue
            lines.append(
                {
                    "text": pred.text,
                    "bbox": [round(b.x0), round(b.y0), round(b.x1), round(b.y1)],
                    "polygon": quads[b.index].round(1).tolist(),
                    "confidence": pred.confidence,
                    "det_score": scores[b.index],
                }
            )
        confs = [line["confidence"] for line in lines if line["confidence"] is not None]
        text = join_lines(lines)
        return Prediction(
            text=text,
            confidence=float(np.mean(confs)) if confs else None,
            finished=True,
            num_tokens=char_tokens(text),
            prompt_tokens=0,
            lines=lines,
            meta={"detected": len(quads)},
        )

    def recognize(
        self, images: Sequence[Image.Image | np.ndarray], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        return [self.read(im) for im in images]


def build(arg: str | None = None, **kwargs: Any) -> PageReader:
    """Registry factory: ``ppocr-page`` (shipped recogniser on onnxruntime) or ``ppocr-page:SPEC_OR_PATH``
    (a saved PP-OCR model directory, an exported ``.onnx``, or any engine spec) for the line recogniser."""
    if arg and arg.endswith(".onnx"):
        arg = f"ppocr-onnx:{arg}"
    return PageReader(arg, **kwargs)
