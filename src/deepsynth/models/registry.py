"""Engine specs → engines. One table, lazily imported, used by the CLI, the evaluation harness and the server.

A spec is ``NAME`` or ``NAME:ARG`` (ARG is usually a path or hub id), e.g. ``rapidocr``, ``tesseract``,
``ppocr`` (the shipped PP-OCRv6 recogniser), ``ppocr:runs/demo/best``, ``deepseek_ocr2:deepseek-ai/DeepSeek-OCR-2``,
``server:http://127.0.0.1:8000``. A bare path to a directory saved by DeepSynth is recognised by its
``deepsynth_model.json`` (written by every adapter's ``save``), which names its family.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsynth.models.base import OCREngine

MODEL_CARD = "deepsynth_model.json"
TINY_MODELS = "deepsynth.testing.tiny_models:build_spec"
"""Where ``FAMILY:tiny``, ``FAMILY:tiny@SEED`` and ``FAMILY:smoke`` of an adapter family are built: random tiny
models of the real architectures, kept out of the model layer (named here, imported only when used)."""


@dataclass(frozen=True)
class Family:
    """One engine family: ``factory`` (``"module:callable"`` taking ``(arg, **kwargs)``) and, for the
    vision-language families, ``adapter`` (``"module:Class"``, a trainable VLMAdapter with tiny test models)."""

    factory: str
    adapter: str = ""


# The one family table: the registry, deepsynth.models.vlm and the tiny test models all read it.
ENGINES: dict[str, Family] = {}


def register_engine(name: str, factory: str, adapter: str = "") -> None:
    """Register ``name`` → ``"package.module:factory"`` (import deferred until the engine is used)."""
    ENGINES[name] = Family(factory, adapter)


def available_engines() -> list[str]:
    return sorted(ENGINES)


def vlm_families() -> list[str]:
    """The vision-language adapter families, in table order."""
    return [name for name, fam in ENGINES.items() if fam.adapter]


def import_target(target: str) -> Any:
    """The object ``"package.module:attr"`` names (imported now)."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def is_tiny_arg(arg: str | None) -> bool:
    return arg in ("tiny", "smoke") or (arg or "").startswith("tiny@")


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says why and what to do."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_hub_id(arg: str) -> bool:
    return bool(_HUB_ID.match(arg)) and not Path(arg).exists()


def load_engine(spec: str, **kwargs: Any) -> OCREngine:
    """Build the engine a spec names: the one loader of the CLI, the evaluation harness, the trainer and the
    server. A spec that names nothing raises :class:`ModelLoadError` saying what to write instead (known
    families, ``FAMILY:hub-id``, a missing path); a hub model that cannot be fetched (offline) says how to get
    it. Errors of the family's own loader (bad options, unreadable files) propagate unchanged."""
    name, _, arg = spec.partition(":")
    if name not in ENGINES and Path(spec).is_dir() and (Path(spec) / MODEL_CARD).is_file():
        name, arg = json.loads((Path(spec) / MODEL_CARD).read_text())["family"], spec
    if name not in ENGINES:
        if _looks_like_hub_id(spec):
            raise ModelLoadError(
                f"{spec!r} looks like a Hugging Face hub id without a model family; write it as "
                f"FAMILY:{spec} (families: {', '.join(available_engines())})"
            )
        if ":" not in spec and "/" in spec and not Path(spec).exists():
            raise ModelLoadError(f"model path {spec!r} does not exist")
        raise ModelLoadError(
            f"unknown engine {name!r}; known: {', '.join(available_engines())} "
            f"(or a directory saved by DeepSynth)"
        )
    family = ENGINES[name]
    target = TINY_MODELS if family.adapter and is_tiny_arg(arg) else family.factory
    factory = import_target(target)
    try:
        if target == TINY_MODELS:
            return factory(name, arg, **kwargs)
        return factory(arg or None, **kwargs)
    except Exception as exc:
        if not (arg and _looks_like_hub_id(arg)) or isinstance(exc, ModelLoadError):
            raise
        if isinstance(exc, FileNotFoundError):
            raise ModelLoadError(f"could not load {spec!r}: {exc}") from exc
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached or the id is wrong"
        raise ModelLoadError(
            f"could not load hub model {arg!r} for {name!r} ({why}: {type(exc).__name__}: {exc}). "
            f"Download it where you have network (`hf download {arg} --local-dir DIR`) and pass "
            f"{name}:DIR instead."
        ) from exc


# Built-in families. Each line points at the module that implements it.
_VLM = "deepsynth.models.vlm"
register_engine("rapidocr", "deepsynth.models.baselines.rapidocr_engine:build")
register_engine("tesseract", "deepsynth.models.baselines.tesseract_engine:build")
register_engine("ppocr", "deepsynth.models.ppocr.adapter:build")
register_engine("ppocr-onnx", "deepsynth.models.ppocr.onnx_engine:build")
register_engine("ppocr-page", "deepsynth.models.ppocr.pages:build")
register_engine("deepseek_ocr2", f"{_VLM}.deepseek_ocr2:build", f"{_VLM}.deepseek_ocr2:DeepseekOcr2Adapter")
register_engine("deepseek_ocr", f"{_VLM}.deepseek_ocr:build")
register_engine("got_ocr2", f"{_VLM}.got_ocr2:build", f"{_VLM}.got_ocr2:GotOcr2Adapter")
register_engine("lighton_ocr", f"{_VLM}.lighton_ocr:build", f"{_VLM}.lighton_ocr:LightOnOcrAdapter")
register_engine("qwen2_5_vl", f"{_VLM}.qwen_vl:build_qwen2_5", f"{_VLM}.qwen_vl:Qwen25VLAdapter")
register_engine("qwen3_vl", f"{_VLM}.qwen_vl:build_qwen3", f"{_VLM}.qwen_vl:Qwen3VLAdapter")
register_engine("trocr", f"{_VLM}.trocr:build", f"{_VLM}.trocr:TrOCRAdapter")
register_engine("server", "deepsynth.inference.client:build")
