"""Engine specs → engines. One table, lazily imported, used by the CLI, the evaluation harness and the server.

A spec is ``NAME`` or ``NAME:ARG`` (ARG is usually a path or hub id), e.g. ``rapidocr``, ``tesseract``,
``ppocr`` (the shipped PP-OCRv6 recogniser), ``ppocr:runs/demo/best``, ``deepseek_ocr2:deepseek-ai/DeepSeek-OCR-2``,
``server:http://127.0.0.1:8000``. A bare path to a directory saved by DeepSynth is recognised by its
``deepsynth_model.json`` (written by every adapter's ``save``), which names its family.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from deepsynth.models.base import OCREngine

# family name -> "module:callable"; the callable takes (arg: str | None, **kwargs) and returns an OCREngine.
ENGINES: dict[str, str] = {}

MODEL_CARD = "deepsynth_model.json"


def register_engine(name: str, target: str) -> None:
    """Register ``name`` → ``"package.module:factory"`` (import deferred until the engine is used)."""
    ENGINES[name] = target


def available_engines() -> list[str]:
    return sorted(ENGINES)


def load_engine(spec: str, **kwargs: Any) -> OCREngine:
    """Build the engine a spec names; unknown names raise a ValueError listing the known ones."""
    name, _, arg = spec.partition(":")
    if name not in ENGINES and Path(spec).is_dir() and (Path(spec) / MODEL_CARD).is_file():
        name, arg = json.loads((Path(spec) / MODEL_CARD).read_text())["family"], spec
    if name not in ENGINES:
        raise ValueError(
            f"unknown engine {name!r}; known: {', '.join(available_engines())} "
            f"(or a directory saved by DeepSynth)"
        )
    module_name, _, attr = ENGINES[name].partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(arg or None, **kwargs)


# Built-in families. Each line points at the module that implements it.
register_engine("rapidocr", "deepsynth.models.baselines.rapidocr_engine:build")
register_engine("tesseract", "deepsynth.models.baselines.tesseract_engine:build")
register_engine("ppocr", "deepsynth.models.ppocr.adapter:build")
register_engine("ppocr-onnx", "deepsynth.models.ppocr.onnx_engine:build")
register_engine("ppocr-page", "deepsynth.models.ppocr.pages:build")
register_engine("deepseek_ocr2", "deepsynth.models.vlm.deepseek_ocr2:build")
register_engine("deepseek_ocr", "deepsynth.models.vlm.deepseek_ocr:build")
register_engine("got_ocr2", "deepsynth.models.vlm.got_ocr2:build")
register_engine("lighton_ocr", "deepsynth.models.vlm.lighton_ocr:build")
register_engine("qwen2_5_vl", "deepsynth.models.vlm.qwen_vl:build_qwen2_5")
register_engine("qwen3_vl", "deepsynth.models.vlm.qwen_vl:build_qwen3")
register_engine("trocr", "deepsynth.models.vlm.trocr:build")
register_engine("server", "deepsynth.inference.client:build")
