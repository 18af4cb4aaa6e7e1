"""A saved model directory as Hugging Face users meet it: a model card with the run's results, files readable by
other users, the documented plain-transformers loader, and the MLflow run keeping the model."""

from __future__ import annotations

import os
import stat

import pytest
import torch
import yaml

from deepsynth.config import load_config
from deepsynth.training.config import TrainConfig
from deepsynth.training.trainer import Trainer
from tests._train_data import real_lines, tiny_adapter


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    lines = real_lines(10)
    cfg = load_config(TrainConfig, None, [
        "batch_size=2", "max_steps=2", "eval.every_steps=2", "eval.at_start=false", "checkpoint.every_steps=0",
        "trackers=[jsonl,mlflow]", "progress=false", "num_threads=1", "model.extend_charset=false",
        f"output_dir={out}", "data.train=[lines=../shared/data/gt4histocr_dta19_lines]",
    ])  # fmt: skip
    trainer = Trainer(cfg, adapter=tiny_adapter(lines), train_samples=lines[:8], eval_samples=lines[8:])
    return out, trainer.run(), trainer


def _card(directory):
    text = (directory / "README.md").read_text(encoding="utf-8")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_model_card_has_metadata_results_data_and_usage(trained):
    out, result, _ = trained
    meta, body = _card(out / "best")
    assert meta["library_name"] == "deepsynth" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["lines"] and "ppocr" in meta["tags"]
    (entry,) = meta["model-index"]
    metrics = {m["type"]: m["value"] for m in entry["results"][0]["metrics"]}
    assert entry["name"] == f"{out.name}-best"
    assert metrics["cer"] == pytest.approx(result.best_metric, abs=1e-6)
    run = yaml.safe_load((out / "run.yaml").read_text())
    for split in ("train", "eval"):
        assert run["data"][split]["sha256"] in body  # the same fingerprints as run.yaml
    assert "deepsynth serve --model THIS_DIR" in body and "AutoModelForTextRecognition" in body
    assert (out / "final" / "README.md").is_file()


def test_every_saved_file_is_readable_by_others(trained):
    out, _, _ = trained
    old = os.umask(0o022)
    os.umask(old)
    for directory in (out / "best", out / "final"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir() if p.is_file()}
        assert modes["model.safetensors"] & 0o044 == 0o044 & ~old, modes
        assert len({m & 0o444 for m in modes.values()}) == 1, modes


def test_documented_transformers_loader_restores_the_head(trained):
    from transformers import AutoModelForTextRecognition

    out, _, trainer = trained
    plain = AutoModelForTextRecognition.from_pretrained(str(out / "best")).eval()
    from deepsynth.models.registry import load_engine

    ours = load_engine(str(out / "best"))
    images = [s.image for s in real_lines(10)[8:]]
    x = ours.preprocess(images)
    with torch.no_grad():
        probs = plain(pixel_values=x).last_hidden_state
        expected = ours.logits(x).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-5)


def test_mlflow_run_keeps_the_best_model(trained):
    from mlflow.tracking import MlflowClient

    out, _, _ = trained
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text().strip()
    names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "model/best")}
    assert {"README.md", "model.safetensors", "charset.json", "deepsynth_model.json"} <= names
    assert client.get_run(run_id).data.tags["deepsynth.model_dir"] == str((out / "best").resolve())
