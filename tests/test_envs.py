"""The one table of DEEPSYNTH_* variables: complete, typed, one truthy parser, documented in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import deepsynth
from deepsynth import envs

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(deepsynth.__file__).parent
RAW_READ = re.compile(r"""(environ(\.get)?|env\.get|envvar=)\s*[\[(]?\s*f?["']DEEPSYNTH_""")


def test_every_variable_named_in_the_package_is_in_the_table_and_read_only_through_it():
    named, raw_reads = set(), []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        named |= set(re.findall(r"DEEPSYNTH_[A-Z0-9_]*[A-Z0-9]", text))
        if path.name != "envs.py":
            raw_reads += [f"{path.relative_to(SRC)}: {m.group(0)}" for m in RAW_READ.finditer(text)]
    assert not raw_reads
    assert named - {"DEEPSYNTH_SAMPLES"} <= set(envs.ENVIRONMENT_VARIABLES)  # the f-string prefix aside


def test_typed_values_defaults_and_errors_that_name_the_variable():
    assert envs.read("DEEPSYNTH_SAMPLES_RATE", {"DEEPSYNTH_SAMPLES_RATE": " 0.5 "}) == 0.5
    assert envs.read("DEEPSYNTH_SAMPLES_MAX_COUNT", {}) == 1000
    assert envs.read("DEEPSYNTH_TRACING", {"DEEPSYNTH_TRACING": ""}) is None  # empty = unset
    for raw, value in [
        ("1", True),
        ("TRUE", True),
        ("on", True),
        ("0", False),
        ("No", False),
        ("off", False),
    ]:
        assert envs.read("DEEPSYNTH_METRICS", {"DEEPSYNTH_METRICS": raw}) is value
    with pytest.raises(ValueError, match="DEEPSYNTH_METRICS='maybe' is not a valid bool"):
        envs.read("DEEPSYNTH_METRICS", {"DEEPSYNTH_METRICS": "maybe"})
    with pytest.raises(ValueError, match="DEEPSYNTH_TRAIN_METRICS_PORT='http' is not a valid int"):
        envs.read("DEEPSYNTH_TRAIN_METRICS_PORT", {"DEEPSYNTH_TRAIN_METRICS_PORT": "http"})


def test_module_attributes_read_the_process_environment(monkeypatch):
    monkeypatch.setenv("DEEPSYNTH_SMOKE_MODEL", "/models/ocr2")
    assert envs.DEEPSYNTH_SMOKE_MODEL == "/models/ocr2"
    monkeypatch.delenv("DEEPSYNTH_SMOKE_MODEL")
    assert envs.DEEPSYNTH_SMOKE_MODEL is None
    with pytest.raises(AttributeError):
        _ = envs.DEEPSYNTH_NO_SUCH_VARIABLE


def test_the_docs_page_is_the_table():
    assert envs.markdown_table() in (ROOT / "docs" / "environment.md").read_text()
