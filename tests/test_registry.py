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
