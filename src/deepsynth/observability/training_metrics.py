"""The ``prometheus`` training tracker: loss, learning rate, step time, CER/WER as Prometheus gauges.

``deepsynth train CONFIG trackers='[prometheus]'`` (tracker name ``prometheus``) exposes the run three ways:

* always: ``<run_dir>/metrics.prom``, rewritten atomically after each ``log_metrics`` (the node_exporter
  textfile-collector format; also handy to inspect by hand);
* ``DEEPSYNTH_TRAIN_METRICS_PORT=9109``: an HTTP ``/metrics`` endpoint for Prometheus to scrape while training
  (bound to ``DEEPSYNTH_TRAIN_METRICS_ADDR``, default ``127.0.0.1``; use ``0.0.0.0`` in a container);
* ``DEEPSYNTH_PUSHGATEWAY_URL=http://pushgateway:9091``: pushed after each ``log_metrics`` and at close
  (job ``deepsynth-train``, grouped by run), for short jobs that finish before a scrape.

Metric keys from the trainer look like ``train/loss`` or ``eval/cer``; the part before ``/`` is the ``split`` label.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from deepsynth import envs
from deepsynth.observability.publish import MetricsPublisher

_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")
# trainer key (after the split prefix) -> dedicated gauge attribute
_DEDICATED = {
    "loss": "loss",
    "lr": "learning_rate",
    "learning_rate": "learning_rate",
    "step_seconds": "step_duration",
    "step_time": "step_duration",
    "cer": "cer",
    "wer": "wer",
}


class PrometheusTracker:
    """Tracker protocol (``log_config``, ``log_metrics``, ``log_text``, ``log_model``, ``close``) over a private
    registry."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        port: int | None = None,
        addr: str | None = None,
        pushgateway: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = _SAFE.sub("_", self.dir.resolve().name) or "run"
        self.textfile = self.dir / "metrics.prom"
        self.registry = r = CollectorRegistry()
        run = ["run"]
        self.step = Gauge("deepsynth_training_step", "Optimizer steps done.", run, registry=r).labels(
            self.run
        )
        self.loss = Gauge("deepsynth_training_loss", "Last logged loss.", ["run", "split"], registry=r)
        self.learning_rate = Gauge(
            "deepsynth_training_learning_rate", "Current learning rate.", ["run", "split"], registry=r
        )
        self.step_duration = Gauge(
            "deepsynth_training_step_duration_seconds",
            "Wall time of the last step.",
            ["run", "split"],
            registry=r,
        )
        self.cer = Gauge(
            "deepsynth_training_cer", "Character error rate (0-1).", ["run", "split"], registry=r
        )
        self.wer = Gauge("deepsynth_training_wer", "Word error rate (0-1).", ["run", "split"], registry=r)
        self.other = Gauge(
            "deepsynth_training_metric",
            "Any other logged metric, by name.",
            ["run", "split", "name"],
            registry=r,
        )
        self.updated = Gauge(
            "deepsynth_training_last_update_timestamp_seconds",
            "When metrics were last logged.",
            run,
            registry=r,
        ).labels(self.run)
        self.info = Gauge(
            "deepsynth_training_info", "Run description (value 1).", ["run", "family"], registry=r
        )
        port_num = port if port is not None else envs.read("DEEPSYNTH_TRAIN_METRICS_PORT", env)
        self.publisher = MetricsPublisher(
            r, self.textfile, port=port_num, addr=addr or envs.read("DEEPSYNTH_TRAIN_METRICS_ADDR", env),
            pushgateway=pushgateway or envs.read("DEEPSYNTH_PUSHGATEWAY_URL", env), job="deepsynth-train",
            grouping_key={"run": self.run},
        )  # fmt: skip
        self.port = self.publisher.port

    def log_model(self, path: Path, name: str) -> None:
        pass  # a model directory is no metric

    def log_config(self, config: dict[str, Any]) -> None:
        model = config.get("model") if isinstance(config, dict) else None
        family = str(model.get("family", "")) if isinstance(model, dict) else ""
        self.info.labels(self.run, family).set(1)
        self._publish()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.step.set(step)
        for key, value in metrics.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isnan(value):
                continue
            split, _, name = key.rpartition("/")
            split = _SAFE.sub("_", split) or "train"
            attr = _DEDICATED.get(name)
            if attr is not None:
                getattr(self, attr).labels(self.run, split).set(value)
            else:
                self.other.labels(self.run, split, _SAFE.sub("_", name)[:64]).set(value)
        self.updated.set(time.time())
        self._publish()

    def log_text(self, name: str, text: str, step: int) -> None:
        """Prometheus holds numbers only: texts are not exported (the jsonl tracker keeps them)."""

    def close(self) -> None:
        self.publisher.close()

    def _publish(self) -> None:
        self.publisher.publish()
