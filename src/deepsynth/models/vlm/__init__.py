"""Vision-language OCR adapters (DeepSeek-OCR-2, DeepSeek-OCR v1, GOT-OCR2, LightOnOCR, Qwen-VL, TrOCR).

The families are the entries of :data:`deepsynth.models.registry.ENGINES` that name an adapter class.
"""

from __future__ import annotations

from typing import Any

from deepsynth.models.registry import ENGINES, import_target, vlm_families


def adapter_classes() -> dict[str, Any]:
    """Family name → adapter class (imports the family modules)."""
    return {family: adapter_class(family) for family in vlm_families()}


def adapter_class(family: str) -> Any:
    if family not in vlm_families():
        raise ValueError(f"unknown VLM family {family!r}; known: {', '.join(vlm_families())}")
    return import_target(ENGINES[family].adapter)
