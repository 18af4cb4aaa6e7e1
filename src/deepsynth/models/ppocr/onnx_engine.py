"""PP-OCR recogniser on onnxruntime (no torch): the fast way to serve a model exported by DeepSynth.

Uses the same preprocessing (preprocess.py) and greedy CTC decoding as the PyTorch adapter, so the two read
identically. Registry: ``ppocr-onnx`` (the shipped recogniser) or ``ppocr-onnx:PATH`` (an exported ``.onnx``
file, or a directory holding ``model.onnx``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepsynth.models.base import Prediction
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.ppocr.batching import recognize_in_batches
from deepsynth.models.ppocr.charset import ONNX_CHARSET_KEY, Charset
from deepsynth.models.ppocr.convert import REC_ONNX, shipped_model_path
from deepsynth.models.ppocr.lm import ONNX_DECODER_KEY, LMDecoder
from deepsynth.models.ppocr.preprocess import preprocess_batch


def resolve_onnx(path: str | Path | None) -> Path:
    if path is None:
        return shipped_model_path(REC_ONNX)
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected an exported .onnx recogniser)")
    return path


class PPOCROnnxEngine:
    """OCREngine over an ONNX PP-OCR recogniser (shipped or exported)."""

    def __init__(self, path: str | Path | None = None, *, batch_size: int = 16, threads: int | None = None):
        import onnxruntime as ort

        self.path = resolve_onnx(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_CHARSET_KEY in meta:
            self.charset = Charset(json.loads(meta[ONNX_CHARSET_KEY]))
        elif "character" in meta:
            self.charset = Charset.from_onnx_metadata(meta["character"])
        else:
            raise ValueError(f"{self.path}: no character list in the ONNX metadata")
        decoder = meta.get(ONNX_DECODER_KEY)
        self.lm_decoder = LMDecoder.from_json(decoder, str(self.path)) if decoder else None
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size
        self.name = "ppocr-onnx" if path is None else f"ppocr-onnx:{path}"

    def probabilities(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Softmax probabilities [batch, frames, classes] for one padded batch."""
        return self.session.run(None, {self.input_name: preprocess_batch(images)})[0]

    def recognize(
        self, images: Sequence[Image.Image | np.ndarray], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        return recognize_in_batches(
            images, self.probabilities, self.charset, self.batch_size, generation, self.lm_decoder
        )


def build(arg: str | None = None, **kwargs: Any) -> PPOCROnnxEngine:
    """Registry factory. Options: batch_size, threads."""
    unknown = set(kwargs) - {"batch_size", "threads"}
    if unknown:
        raise TypeError(f"ppocr-onnx: unknown options {sorted(unknown)}; known: batch_size, threads")
    return PPOCROnnxEngine(arg, **kwargs)
