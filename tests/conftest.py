"""Shared test fixtures: the real OCR sets in ../shared/data, read in place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEEPSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real OCR sets (fondue_en_print20, tapuscorpus_fr, gt4histocr_dta19_lines)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared OCR data not found at {SHARED_DATA}")
    return SHARED_DATA
