"""The VLM recipes run end to end on the one trainer with tiny models (real Fraktur lines from examples/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from deepsynth.config import load_config  # noqa: E402
from deepsynth.models.registry import vlm_families  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
VLM_FAMILIES = vlm_families()
FAMILY_CONFIGS = [f"{f}_lora.yaml" for f in VLM_FAMILIES]
TINY_OVERRIDES = [
    "model.path=tiny",
    "max_steps=2",
    "epochs=null",
    "batch_size=2",
    "grad_accum=1",
    "data.limit=4",
    "data.eval_limit=2",
    "eval.every_steps=0",
    "eval.at_start=false",
    "eval.batch_size=2",
    "checkpoint.every_steps=0",
    "generation.max_new_tokens=4",
    "trackers=[jsonl]",
    "progress=false",
    "precision=fp32",
]


def _train(config: Path, overrides: list[str]):
    from deepsynth.training.config import TrainConfig
    from deepsynth.training.trainer import train

    cfg = load_config(TrainConfig, config, overrides)
    return cfg, train(cfg)


def _final_dir(cfg, result) -> Path:
    final = Path(result.final_dir) if result.final_dir else None
    assert final is not None and final.is_dir(), f"no final model written under {cfg.output_dir}"
    return final


def test_every_recipe_starts_with_its_command():
    names = [*FAMILY_CONFIGS, "deepseek_ocr2_qlora.yaml", "deepseek_ocr2_smoke.yaml"]
    for name in names:
        first = (CONFIGS / name).read_text().splitlines()[0]
        assert first == f"# deepsynth train configs/{name}", name


@pytest.mark.slow
def test_deepseek_ocr2_smoke_recipe_end_to_end(tmp_path, monkeypatch):
    """What `make deepseek-ocr-smoke` runs: `deepsynth train configs/deepseek_ocr2_smoke.yaml`."""
    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    monkeypatch.chdir(ROOT)  # the recipe names examples/ relative to the repository
    monkeypatch.delenv("DEEPSYNTH_SMOKE_MODEL", raising=False)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "configs/deepseek_ocr2_smoke.yaml", f"output_dir={run}"])
    assert res.exit_code == 0, res.output
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == 4 and len(result["losses"]) == 4
    assert all(v == v and v > 0 for v in result["losses"].values())  # finite, non-zero (answer-only labels)
    assert result["evals"] and "cer" in result["evals"][-1]
    final = Path(result["final_dir"])
    card = json.loads((final / "deepsynth_model.json").read_text())
    assert card["family"] == "deepseek_ocr2" and card["format"] == "lora"
    from deepsynth.models.registry import load_engine

    engine = load_engine(str(final))  # the saved run serves as an engine
    assert engine.family == "deepseek_ocr2" and engine.has_lora


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_CONFIGS + ["deepseek_ocr2_qlora.yaml"])
def test_family_recipe_runs_on_tiny_model(name, tmp_path, monkeypatch):
    if "qlora" in name:
        pytest.importorskip("bitsandbytes")
    monkeypatch.chdir(ROOT)
    overrides = [*TINY_OVERRIDES, f"output_dir={tmp_path / 'run'}"]
    if name.startswith("deepseek_ocr2"):
        overrides.append(
            "model.options.image_mode=base"
        )  # gundam tiles are covered in test_vlm_deepseek_ocr2
    cfg, result = _train(CONFIGS / name, overrides)
    final = _final_dir(cfg, result)
    card = json.loads((final / "deepsynth_model.json").read_text())
    assert card["family"] == cfg.model.family and card["format"] == "lora"
    assert result.steps == 2 and all(v == v for v in result.losses.values())


@pytest.mark.slow
def test_lora_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    """A LoRA run stopped at step 2 and resumed gives the same step-3/4 losses as one run of 4 steps."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("DEEPSYNTH_SMOKE_MODEL", raising=False)
    common = [
        "checkpoint.every_steps=2",
        "eval.every_steps=0",
        "data.eval_limit=1",
        "generation.max_new_tokens=2",
    ]
    _, full = _train(CONFIGS / "deepseek_ocr2_smoke.yaml", [*common, f"output_dir={tmp_path / 'a'}"])
    _train(CONFIGS / "deepseek_ocr2_smoke.yaml", [*common, "max_steps=2", f"output_dir={tmp_path / 'b'}"])
    _, resumed = _train(
        CONFIGS / "deepseek_ocr2_smoke.yaml", [*common, "resume=true", f"output_dir={tmp_path / 'b'}"]
    )
    assert full.steps == resumed.steps == 4
    import yaml

    run_info = yaml.safe_load((tmp_path / "b" / "run.yaml").read_text())
    assert "step" in str(run_info.get("resumed_from") or ""), run_info.get(
        "resumed_from"
    )  # it really resumed
    for step in (3, 4):
        assert resumed.losses[step] == pytest.approx(full.losses[step], rel=1e-5, abs=1e-6)
