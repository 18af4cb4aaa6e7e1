"""deepsynth tune on a real local Ray runtime: Optuna TPE + ASHA over the recipe, scored on the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.config import ConfigError

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_parse_space_validates_entries():
    from deepsynth.scale.tune import parse_space

    space = parse_space(["optim.lr=loguniform:1e-5:1e-3", "batch_size=choice:8,16", "augment.p=uniform:0:1"])
    assert space == {"optim.lr": ("loguniform", 1e-5, 1e-3), "batch_size": ("choice", [8, 16]),
                     "augment.p": ("uniform", 0.0, 1.0)}  # fmt: skip
    for bad in ("optim.lr", "optim.lr=loguniform:0:1", "optim.lr=gauss:1:2", "batch_size=choice:"):
        with pytest.raises(ConfigError, match="--space"):
            parse_space([bad])


def test_bad_override_fails_before_ray_starts(tmp_path):
    result = runner.invoke(app, ["tune", str(ROOT / "configs/ppocr_finetune.yaml"), "optim.nope=1",
                                 "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "optim.nope" in result.output
    assert not ray.is_initialized()


@pytest.mark.slow
def test_tune_runs_trials_and_writes_the_best_recipe(tmp_path, monkeypatch):
    out = tmp_path / "tune"
    monkeypatch.chdir(ROOT)  # relative paths as a user types them: the trials resolve them here too
    args = [
        "tune", "configs/ppocr_finetune.yaml", "data.train=[examples/gt4histocr_dta19]", "data.split_key=subset", "data.eval_limit=6",
        "max_steps=3", "eval.times=null", "eval.every_steps=1", "checkpoint.times=null", "checkpoint.every_steps=0",
        "num_threads=1", "trackers=[jsonl]",
        "--trials", "2", "--minutes", "8", "--trial-minutes", "4", "--out", str(out),
        "--space", "optim.lr=loguniform:1e-5:1e-4", "--space", "batch_size=choice:2,4",
    ]  # fmt: skip
    try:
        result = runner.invoke(app, args, catch_exceptions=False)
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "trials.json").read_text())
    assert len(summary["trials"]) == 2
    assert all(len(t["trial"]) < 16 for t in summary["trials"])  # an id; the values have their own columns
    scores = [t["val_cer"] for t in summary["trials"] if t["status"] == "done"]
    assert scores and all(0.0 <= s < 1.0 for s in scores)  # the shipped model reads Fraktur at ~6% CER
    best = summary["best"]
    assert best["val_cer"] == min(scores) and 1e-5 <= best["params"]["optim.lr"] <= 1e-4
    assert best["validations"] >= 2  # every validation was reported to Tune (ASHA sees the curve)
    text = (out / "best.yaml").read_text()
    assert text.startswith(f"# deepsynth train {out / 'best.yaml'}")
    cfg = yaml.safe_load(text)
    assert cfg["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])
    assert cfg["batch_size"] == best["params"]["batch_size"]
    assert cfg["max_minutes"] == 20  # the recipe's own budget, not the trial's
    # the recipe keeps its LM reader; trials read greedily (it is fitted once, by the final run)
    assert cfg["lm"]["enabled"] is True
    trial_cfg = yaml.safe_load((next((out / "trials").glob("*")) / "run.yaml").read_text())
    assert trial_cfg["config"]["lm"]["enabled"] is False
    assert "| trial |" in (out / "trials.md").read_text()
