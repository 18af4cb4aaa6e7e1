"""Vision-language OCR adapters (DeepSeek-OCR-2, DeepSeek-OCR v1, GOT-OCR2, LightOnOCR, Qwen-VL, TrOCR)."""

from __future__ import annotations

import importlib
from typing import Any

_CLASSES = {
    "deepseek_ocr2": "deepsynth.models.vlm.deepseek_ocr2:DeepseekOcr2Adapter",
    "got_ocr2": "deepsynth.models.vlm.got_ocr2:GotOcr2Adapter",
    "lighton_ocr": "deepsynth.models.vlm.lighton_ocr:LightOnOcrAdapter",
    "qwen2_5_vl": "deepsynth.models.vlm.qwen_vl:Qwen25VLAdapter",
    "qwen3_vl": "deepsynth.models.vlm.qwen_vl:Qwen3VLAdapter",
    "trocr": "deepsynth.models.vlm.trocr:TrOCRAdapter",
}


def adapter_classes() -> dict[str, Any]:
    """Family name → adapter class (imports the family modules)."""
    out = {}
    for family, target in _CLASSES.items():
        module, _, attr = target.partition(":")
        out[family] = getattr(importlib.import_module(module), attr)
    return out


def adapter_class(family: str) -> Any:
    if family not in _CLASSES:
        raise ValueError(f"unknown VLM family {family!r}; known: {', '.join(_CLASSES)}")
    module, _, attr = _CLASSES[family].partition(":")
    return getattr(importlib.import_module(module), attr)
