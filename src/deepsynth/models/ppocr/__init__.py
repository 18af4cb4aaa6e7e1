"""The embedded PP-OCRv6-small recogniser (shipped in the rapidocr wheel) as a trainable DeepSynth model.

- :class:`~deepsynth.models.ppocr.adapter.PPOCRAdapter` (PyTorch; registry ``ppocr`` / ``ppocr:PATH``)
- :class:`~deepsynth.models.ppocr.onnx_engine.PPOCROnnxEngine` (onnxruntime; ``ppocr-onnx[:PATH]``)
- :class:`~deepsynth.models.ppocr.pages.PageReader` (detector + recogniser; ``ppocr-page[:SPEC]``)

Names are imported lazily so the ONNX engine never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PPOCRAdapter": "deepsynth.models.ppocr.adapter",
    "PPOCROnnxEngine": "deepsynth.models.ppocr.onnx_engine",
    "PageReader": "deepsynth.models.ppocr.pages",
    "Charset": "deepsynth.models.ppocr.charset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
