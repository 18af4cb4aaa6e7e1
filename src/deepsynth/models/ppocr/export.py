"""Export a (fine-tuned) PP-OCR recogniser to ONNX for fast serving (onnxruntime, or rapidocr itself).

Input ``x`` float32 [batch, 3, 48, width] (preprocess.py), output ``softmax`` [batch, frames, classes], both
with dynamic batch and width. The charset is stored in the metadata: ``deepsynth_charset`` (JSON, exact) and,
when the class layout is rapidocr's (list + trailing space), ``character`` as rapidocr reads it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from deepsynth.models.ppocr import lora as lora_utils
from deepsynth.models.ppocr.charset import ONNX_CHARSET_KEY
from deepsynth.models.ppocr.lm import ONNX_DECODER_KEY

if TYPE_CHECKING:
    from deepsynth.models.ppocr.adapter import PPOCRAdapter


class _SoftmaxRecognizer(torch.nn.Module):
    def __init__(self, core: torch.nn.Module):
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.core.model(x).last_hidden_state
        hidden = self.core.head.encoder(features).last_hidden_state
        return torch.softmax(self.core.head.head(hidden), dim=-1)


def export_onnx(
    adapter: PPOCRAdapter, path: str | Path, *, opset: int = 17, example_width: int = 320
) -> Path:
    """Write ``path`` (a ``.onnx`` file, or ``model.onnx`` inside a directory); LoRA is merged into a copy."""
    import onnx

    path = Path(path)
    if path.suffix != ".onnx":
        path = path / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = adapter.model
    if lora_utils.has_lora(model):
        model = lora_utils.merge(copy.deepcopy(model))
    wrapper = _SoftmaxRecognizer(lora_utils.unwrap(model)).eval()
    example = torch.zeros(1, 3, 48, example_width, device=adapter.device)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=["x"],
            output_names=["softmax"],
            dynamic_axes={"x": {0: "batch", 3: "width"}, "softmax": {0: "batch", 1: "frames"}},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    chars = adapter.charset.chars
    meta = {ONNX_CHARSET_KEY: json.dumps(chars, ensure_ascii=False), "deepsynth_family": "ppocr"}
    if adapter.lm_decoder is not None:  # the exported model reads as the adapter does
        meta[ONNX_DECODER_KEY] = adapter.lm_decoder.to_json()
    if chars and chars[-1] == " " and " " not in chars[:-1]:
        meta["character"] = "\n".join(chars[:-1])
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path
