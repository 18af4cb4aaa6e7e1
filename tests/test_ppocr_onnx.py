"""Export to ONNX and the onnxruntime engine: parity with the PyTorch model, charset in the metadata."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from deepsynth.models.ppocr.adapter import PPOCRAdapter
from deepsynth.models.ppocr.onnx_engine import PPOCROnnxEngine
from deepsynth.models.registry import load_engine
from tests.ppocr_helpers import real_lines, synthetic_line


def test_tiny_export_matches_pytorch_at_any_batch_and_width(tmp_path):
    adapter = PPOCRAdapter.tiny_random("abcdefghijklmnopqrstuvwxyz ", seed=4)
    adapter.extend_charset("ſ")  # the exported class list must carry added characters
    path = adapter.export_onnx(tmp_path / "exp")
    assert path == tmp_path / "exp" / "model.onnx"
    engine = load_engine(f"ppocr-onnx:{tmp_path / 'exp'}")
    assert isinstance(engine, PPOCROnnxEngine)
    assert engine.charset.chars == adapter.charset.chars and engine.charset.chars[-1] == "ſ"
    short = [synthetic_line("abc")]
    long = [synthetic_line("a much longer line of text than the first"), synthetic_line("mid size line")]
    for batch in (short, long):
        ref, got = adapter.probabilities(batch), engine.probabilities(batch)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4
    texts = [p.text for p in engine.recognize(short + long)]
    assert texts == [p.text for p in adapter.recognize(short + long)]


def test_lora_model_exports_merged(tmp_path):
    adapter = PPOCRAdapter.tiny_random("abcdefghijklmnopqrstuvwxyz ", seed=5)
    adapter.apply_lora(SimpleNamespace(r=4, alpha=8, dropout=0.0, targets="all-linear", preset=None))
    for name, param in adapter.model.named_parameters():  # make the adapters non-trivial
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    engine = PPOCROnnxEngine(adapter.export_onnx(tmp_path / "lora.onnx"))
    images = [synthetic_line("lora export")]
    assert np.abs(engine.probabilities(images) - adapter.probabilities(images)).max() < 1e-4
    assert type(adapter.model).__name__ == "PeftModel"  # exporting did not merge the live model


def test_unknown_options_and_missing_file(tmp_path):
    with pytest.raises(TypeError, match="unknown options"):
        load_engine("ppocr-onnx", beams=2)
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        PPOCROnnxEngine(tmp_path)


@pytest.mark.slow
def test_shipped_export_parity_on_real_lines(tmp_path, shared_data):
    """The converted shipped model, exported back to ONNX, reads real lines like PyTorch (and like the
    original ONNX, which is what rapidocr runs)."""
    adapter = PPOCRAdapter.from_shipped()
    engine = PPOCROnnxEngine(adapter.export_onnx(tmp_path / "shipped.onnx"))
    original = load_engine("ppocr-onnx")
    assert engine.charset.chars == original.charset.chars  # rapidocr-compatible "character" metadata too
    images = [s.image for s in real_lines(shared_data, per_set=4)]
    worst = 0.0
    for start in range(0, len(images), 4):
        chunk = images[start : start + 4]
        worst = max(worst, float(np.abs(engine.probabilities(chunk) - adapter.probabilities(chunk)).max()))
    print(f"export parity: {len(images)} lines, max |dp| = {worst:.2e}")
    assert worst <= 1e-3
    exported = [p.text for p in engine.recognize(images)]
    assert exported == [p.text for p in adapter.recognize(images)]
    assert exported == [p.text for p in original.recognize(images)]
