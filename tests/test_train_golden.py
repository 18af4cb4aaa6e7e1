"""Recipe regression test (torchtune style): fixed seed, tiny model, real lines -> the recorded loss per step.

A change to the trainer, the data order, the optimizer/schedule or the PP-OCR loss that moves any of these
numbers fails here. If the change is intended, regenerate and commit the file:

    DEEPSYNTH_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_train_golden.py -q
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deepsynth.config import load_config
from deepsynth.training.config import TrainConfig
from deepsynth.training.trainer import Trainer
from tests._train_data import real_lines, tiny_adapter

GOLDEN = Path(__file__).parent / "golden" / "train_tiny_ppocr_losses.json"
RECIPE = [
    "batch_size=2", "grad_accum=2", "max_steps=5", "optim.lr=1e-3", "optim.warmup_steps=2",
    "optim.schedule=cosine", "optim.grad_clip=1.0", "seed=0", "eval.every_steps=0", "eval.at_start=false",
    "checkpoint.every_steps=0", "checkpoint.save_final=false", "trackers=[jsonl]", "progress=false",
    "num_threads=1", "model.extend_charset=false",
]  # fmt: skip


def test_losses_match_the_recorded_run(tmp_path):
    samples = real_lines(8)
    cfg = load_config(TrainConfig, None, [*RECIPE, f"output_dir={tmp_path}"])
    result = Trainer(cfg, adapter=tiny_adapter(samples, seed=0), train_samples=samples, eval_samples=[]).run()
    losses = {str(k): v for k, v in sorted(result.losses.items())}
    if os.environ.get("DEEPSYNTH_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"recipe": RECIPE, "losses": losses}, indent=2) + "\n")
        pytest.skip(f"regenerated {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    assert golden["recipe"] == RECIPE, "the recipe changed: regenerate the golden file (see module docstring)"
    assert list(losses) == list(golden["losses"])
    for step, expected in golden["losses"].items():
        assert losses[step] == pytest.approx(expected, rel=1e-5, abs=1e-6), f"step {step}"
