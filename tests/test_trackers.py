"""Every tracker writes the real files its tool reads back (TensorBoard, MLflow, W&B offline, JSONL)."""

from __future__ import annotations

import json
import time

import pytest

from deepsynth.training.trackers import FanOut, build_trackers

CONFIG = {"optim": {"lr": 1e-4}, "batch_size": 8, "model": {"family": "ppocr"}}


def _log_some(tracker) -> None:
    tracker.log_config(CONFIG)
    for step in (1, 2, 3):
        tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-4}, step)
    tracker.log_metrics({"eval/cer": 0.25}, 3)
    tracker.log_text("eval/examples", "ref: `ſein` hyp: `sein`", 3)
    tracker.close()


def test_jsonl_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_some(build_trackers(["tensorboard"], tmp_path))  # jsonl is always added
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 3]
    assert rows[1]["train/loss"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 1e-4
    assert "ſein" in (tmp_path / "texts.jsonl").read_text(encoding="utf-8")

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert loss[2].value == pytest.approx(1 / 3, rel=1e-6)
    assert acc.Scalars("eval/cer")[0].value == pytest.approx(0.25)
    assert "eval/examples/text_summary" in acc.Tags()["tensors"]


def test_mlflow_local_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    _log_some(build_trackers(["mlflow"], run_dir))
    assert (run_dir / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.0001"
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(1, 1.0), (2, 0.5), (3, 0.333333)]
    artifacts = [a.path for a in client.list_artifacts(run_id, "eval/examples")]
    assert artifacts == ["eval/examples/step_0000003.txt"]
    assert not (tmp_path / "mlruns").exists()

    # a resumed run continues the same MLflow run
    t = build_trackers(["mlflow"], run_dir)
    t.log_metrics({"train/loss": 0.2}, 4)
    t.close()
    assert len(client.get_metric_history(run_id, "train/loss")) == 4


def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _log_some(build_trackers(["wandb"], tmp_path))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    data = runs[0] / f"run-{run_id}.wandb"
    assert data.is_file()
    wanted = (b"train/loss", b"eval/examples", b"optim.lr")
    deadline = time.monotonic() + 60  # wandb's service process may still be writing on a saturated machine
    while not all(w in (records := data.read_bytes()) for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(w in records for w in wanted)  # the transaction log `wandb sync` uploads later


def test_unknown_tracker_is_named(tmp_path):
    with pytest.raises(ValueError, match="tensorbord"):
        build_trackers(["tensorbord"], tmp_path)


def test_a_failing_tracker_does_not_stop_the_others(tmp_path):
    class Broken:
        def log_config(self, config):
            pass

        def log_metrics(self, metrics, step):
            raise OSError("disk full")

        def log_text(self, name, text, step):
            pass

        def close(self):
            pass

    good = build_trackers([], tmp_path)
    fan = FanOut([Broken(), *good.trackers])
    with pytest.warns(UserWarning, match="disk full"):
        fan.log_metrics({"a": 1.0}, 1)
    fan.log_metrics({"a": 2.0}, 2)
    fan.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
