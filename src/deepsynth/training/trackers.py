"""Experiment trackers behind one small protocol (torchtune's metric-logger idea).

``jsonl`` (always on) writes ``metrics.jsonl``/``texts.jsonl`` in the run directory; ``tensorboard`` (default)
writes tfevents under ``tb/``; ``mlflow`` uses a local SQLite store ``mlflow.db`` (artifacts in ``mlflow/``);
``wandb`` runs offline under ``wandb/`` (sync later with ``wandb sync``); ``prometheus`` is served by
:mod:`deepsynth.observability.training_metrics`. Each backend is imported only when asked for.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

TRACKERS = ("jsonl", "tensorboard", "mlflow", "wandb", "prometheus")


@runtime_checkable
class Tracker(Protocol):
    """What the trainer calls; every backend implements these five methods."""

    def log_config(self, config: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_text(self, name: str, text: str, step: int) -> None: ...

    def log_model(self, path: Path, name: str) -> None:
        """At the end of training: the saved model directory to keep with the run (``name``: best/final)."""
        ...

    def close(self) -> None: ...


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class JsonlTracker:
    """Append-only JSON lines: the record every other tool can read (and resume appends to)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._texts = open(self.dir / "texts.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def log_config(self, config: dict[str, Any]) -> None:
        (self.dir / "config.json").write_text(json.dumps(config, indent=2, default=str, ensure_ascii=False))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._metrics.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self._metrics.flush()

    def log_text(self, name: str, text: str, step: int) -> None:
        self._texts.write(json.dumps({"step": step, "name": name, "text": text}, ensure_ascii=False) + "\n")
        self._texts.flush()

    def log_model(self, path: Path, name: str) -> None:
        pass  # result.json next to metrics.jsonl names the best and final model directories

    def close(self) -> None:
        self._metrics.close()
        self._texts.close()


class TensorBoardTracker:
    """tfevents files in ``run_dir/tb`` (``tensorboard --logdir runs``)."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def log_config(self, config: dict[str, Any]) -> None:
        flat = _flatten(config)
        table = "\n".join(f"| {k} | {json.dumps(v, default=str)} |" for k, v in flat.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_text(self, name: str, text: str, step: int) -> None:
        self.writer.add_text(name, text, step)

    def log_model(self, path: Path, name: str) -> None:
        self.writer.add_text(f"model/{name}", str(path), 0)

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    """A local MLflow store (``sqlite:///run_dir/mlflow.db``); view with ``mlflow ui --backend-store-uri ...``.

    Uses ``MlflowClient`` (no global active run); the run id is kept in ``mlflow_run_id`` so a resumed
    training continues the same MLflow run.
    """

    def __init__(self, run_dir: str | Path, experiment: str = "deepsynth"):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.dir = Path(run_dir).resolve()
        self.tracking_uri = f"sqlite:///{self.dir / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(experiment, artifact_location=(self.dir / "mlflow").as_uri())
        )
        id_file = self.dir / "mlflow_run_id"
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=self.dir.name).info.run_id
            id_file.write_text(self.run_id)

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in _flatten(config).items()]
        existing = self.client.get_run(self.run_id).data.params
        params = [p for p in params if p.key not in existing]  # params are immutable in MLflow
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )

    def log_text(self, name: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{name}/step_{step:07d}.txt")

    def log_model(self, path: Path, name: str) -> None:
        """The model directory as the run's ``model/NAME`` artifact (model card, weights, charset)."""
        self.client.log_artifacts(self.run_id, str(path), f"model/{name}")
        self.client.set_tag(self.run_id, "deepsynth.model_dir", str(Path(path).resolve()))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """Weights & Biases; offline unless ``WANDB_MODE`` says otherwise. Files go to ``run_dir/wandb``."""

    def __init__(self, run_dir: str | Path, project: str = "deepsynth"):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._wandb = wandb
        self.dir = Path(run_dir).resolve()
        id_file = self.dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=project,
            dir=str(self.dir),
            id=run_id,
            name=self.dir.name,
            resume="allow",
            mode=os.environ["WANDB_MODE"],
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(_flatten(config), allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_text(self, name: str, text: str, step: int) -> None:
        self.run.log({name: self._wandb.Html(f"<pre>{_escape(text)}</pre>")}, step=step)

    def log_model(self, path: Path, name: str) -> None:
        self.run.summary["model_dir"] = str(Path(path).resolve())  # the weights stay on disk, not uploaded

    def close(self) -> None:
        self.run.finish()


def _escape(text: str) -> str:
    import html

    return html.escape(text)


class FanOut:
    """Sends every call to several trackers; a failing backend is reported once and then dropped."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def _each(self, method: str, *args: Any) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as exc:  # a tracker must never kill a training run
                import warnings

                warnings.warn(
                    f"tracker {type(t).__name__}.{method} failed ({exc}); disabling it", stacklevel=2
                )
                self.trackers.remove(t)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._each("log_metrics", metrics, step)

    def log_text(self, name: str, text: str, step: int) -> None:
        self._each("log_text", name, text, step)

    def log_model(self, path: Path, name: str) -> None:
        self._each("log_model", path, name)

    def close(self) -> None:
        self._each("close")


class NullTracker:
    """For non-main processes in multi-process training."""

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_text(self, name: str, text: str, step: int) -> None:
        pass

    def log_model(self, path: Path, name: str) -> None:
        pass

    def close(self) -> None:
        pass


_BUILDERS = {
    "jsonl": "deepsynth.training.trackers:JsonlTracker",
    "tensorboard": "deepsynth.training.trackers:TensorBoardTracker",
    "mlflow": "deepsynth.training.trackers:MLflowTracker",
    "wandb": "deepsynth.training.trackers:WandbTracker",
    "prometheus": "deepsynth.observability.training_metrics:PrometheusTracker",
}


def build_trackers(names: Sequence[str], run_dir: str | Path) -> FanOut:
    """One tracker that fans out to ``names`` (``jsonl`` is always included). Unknown names raise."""
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; known: {', '.join(TRACKERS)}")
    ordered = ["jsonl", *[n for n in dict.fromkeys(names) if n != "jsonl"]]
    built: list[Tracker] = []
    for name in ordered:
        module, _, attr = _BUILDERS[name].partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise ImportError(
                f"tracker {name!r} needs an optional package ({exc.name}); pip install 'deepsynth[track]'"
            ) from exc
        built.append(cls(run_dir))
    return FanOut(built)
