"""RapidOCR 3.10 baseline: the PP-OCRv6-small detector + recogniser ONNX models shipped in the wheel.

Line mode (default) runs recognition only on each image (a cropped text line). Page mode runs detection +
recognition and joins the recognised boxes in reading order (rows top-to-bottom, boxes left-to-right).
RapidOCR's per-call flags are sticky, so every call passes ``use_det``/``use_cls``/``use_rec`` explicitly.
The angle classifier is off by default: it flips some upright lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from deepsynth.models.base import Prediction, char_tokens
from deepsynth.models.baselines.reading_order import reading_order
from deepsynth.models.generation import GenerationConfig

Mode = Literal["line", "page"]


class RapidOCREngine:
    """OCREngine over ``rapidocr.RapidOCR`` (onnxruntime, CPU by default)."""

    def __init__(
        self,
        *,
        mode: Mode = "line",
        use_cls: bool = False,
        threads: int | None = None,
        text_score: float = 0.5,
        params: dict[str, Any] | None = None,
    ) -> None:
        if mode not in ("line", "page"):
            raise ValueError(f"rapidocr mode must be 'line' or 'page', got {mode!r}")
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:  # pragma: no cover - rapidocr is a core dependency
            raise RuntimeError(
                "rapidocr is not installed: pip install 'rapidocr==3.10.0' onnxruntime"
            ) from exc
        cfg: dict[str, Any] = {"Global.log_level": "warning", "Global.text_score": text_score}
        if threads:
            cfg["EngineConfig.onnxruntime.intra_op_num_threads"] = int(threads)
            cfg["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
        cfg.update(params or {})
        self._ocr = RapidOCR(params=cfg)
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        self.mode: Mode = mode
        self.use_cls = use_cls
        self.name = f"rapidocr-3.10-ppocrv6-small[{mode}]"

    def _bgr(self, image: Image.Image) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1])

    def _read_line(self, image: Image.Image) -> Prediction:
        out = self._ocr(self._bgr(image), use_det=False, use_cls=self.use_cls, use_rec=True)
        txts = getattr(out, "txts", None) or ()
        scores = getattr(out, "scores", None) or ()
        text = " ".join(t.strip() for t in txts if t.strip())
        conf = float(np.mean(scores)) if len(scores) else None
        return Prediction(text=text, confidence=conf, finished=None)

    def _read_page(self, image: Image.Image) -> Prediction:
        out = self._ocr(self._bgr(image), use_det=True, use_cls=self.use_cls, use_rec=True)
        boxes = getattr(out, "boxes", None)
        txts = getattr(out, "txts", None)
        if boxes is None or txts is None or len(txts) == 0:
            return Prediction(text="", confidence=None, lines=[])
        scores = list(getattr(out, "scores", None) or [None] * len(txts))
        items = [
            {"text": t, "confidence": None if s is None else float(s), "box": np.asarray(b).tolist()}
            for b, t, s in zip(boxes, txts, scores, strict=True)
        ]
        lines = reading_order(items)
        text = "\n".join(line["text"] for line in lines)
        confs = [i["confidence"] for i in items if i["confidence"] is not None]
        return Prediction(text=text, confidence=float(np.mean(confs)) if confs else None, lines=lines)

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        """Read each image (line crops in line mode, full pages in page mode)."""
        read = self._read_line if self.mode == "line" else self._read_page
        preds = []
        for image in images:
            t0 = time.perf_counter()
            pred = read(image)
            pred.meta["seconds"] = round(time.perf_counter() - t0, 4)
            pred.num_tokens, pred.prompt_tokens = char_tokens(pred.text), 0  # usage: characters out
            preds.append(pred)
        return preds


def build(arg: str | None = None, **kwargs: Any) -> RapidOCREngine:
    """Registry factory: ``rapidocr`` (line mode) or ``rapidocr:page``; kwargs go to :class:`RapidOCREngine`."""
    if arg:
        kwargs.setdefault("mode", arg)
    return RapidOCREngine(**kwargs)
