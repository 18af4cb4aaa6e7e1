"""Engine registry: spec parsing, unknown names, DeepSynth model directories."""

from __future__ import annotations

import json

import pytest

from deepsynth.models import registry


def test_unknown_engine_lists_known():
    with pytest.raises(ValueError, match="unknown engine 'nope'.*rapidocr"):
        registry.load_engine("nope")


def test_model_dir_resolved_by_card(tmp_path):
    calls = []
    registry.register_engine("_echo", "tests.test_registry:_echo_factory")
    try:
        (tmp_path / registry.MODEL_CARD).write_text(json.dumps({"family": "_echo"}))
        engine = registry.load_engine(str(tmp_path), flag=1)
        calls.append(engine)
        assert engine == ("_echo", str(tmp_path), {"flag": 1})
        assert registry.load_engine("_echo") == ("_echo", None, {})
        assert registry.load_engine("_echo:some/hub-id") == ("_echo", "some/hub-id", {})
    finally:
        registry.ENGINES.pop("_echo")


def _echo_factory(arg, **kwargs):
    return ("_echo", arg, kwargs)


def test_train_and_eval_get_the_friendly_load_errors(tmp_path):
    """registry.load_engine is the one loader: the trainer and `deepsynth eval` see the server's messages."""
    from deepsynth.config import load_config
    from deepsynth.training.config import TrainConfig
    from deepsynth.training.runtime import build_adapter

    with pytest.raises(registry.ModelLoadError, match="FAMILY:deepseek-ai/DeepSeek-OCR-2"):
        registry.load_engine("deepseek-ai/DeepSeek-OCR-2")
    with pytest.raises(registry.ModelLoadError, match="does not exist"):
        registry.load_engine("runs/definitely/missing")
    cfg = load_config(
        TrainConfig, None, ["model.family=deepseek-ai/DeepSeek-OCR-2", f"output_dir={tmp_path}"]
    )
    with pytest.raises(registry.ModelLoadError, match="hub id without a model family"):
        build_adapter(cfg)
