"""Model versions and aliases in MLflow's Model Registry (a local SQLite store by default, any tracking URI).

Each trained model becomes a version of a registered model: its directory is logged as the artifacts of an
MLflow run (metrics, data fingerprints and the training config logged with it), and the version is created
from that run's ``model`` folder. Aliases ``champion`` and ``challenger`` point at versions; every move of
``champion`` is appended to the registered model's ``champion_history`` tag, which ``rollback`` walks back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepsynth.models.registered import RegistryError, RegistryReader

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"
RUN_TAG = "deepsynth.loop_run"
EXPERIMENT = "deepsynth-loop"
__all__ = ["CHAMPION", "CHALLENGER", "ModelRegistry", "RegistryError"]


class ModelRegistry(RegistryReader):
    """The loop's versions and aliases: :class:`RegistryReader` (aliases, locating a version) plus changes."""

    def __init__(self, tracking_uri: str, artifact_root: str | Path | None = None):
        super().__init__(tracking_uri, create=True)
        self.artifact_root = Path(artifact_root).resolve().as_uri() if artifact_root else None

    # ------------------------------------------------------------------ queries
    def version_info(self, name: str, version: str) -> dict[str, Any]:
        """Tags, source and run metrics of a version (RegistryError when it does not exist)."""
        from mlflow.exceptions import MlflowException

        try:
            v = self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"model {name!r} has no version {version!r}") from exc
        metrics = self.client.get_run(v.run_id).data.metrics if v.run_id else {}
        return {"name": name, "version": str(v.version), "source": v.source, "run_id": v.run_id,
                "tags": dict(v.tags), "metrics": dict(metrics), "aliases": list(v.aliases)}  # fmt: skip

    def find_run_version(self, name: str, run_id: str) -> str | None:
        """The version a loop run registered (so a resumed run never registers twice)."""
        if not self._exists(name):
            return None
        for v in self.client.search_model_versions(f"name = '{name}'"):
            if v.tags.get(RUN_TAG) == run_id:
                return str(v.version)
        return None

    def history(self, name: str) -> list[str]:
        """Versions that were champion, oldest first (the last one is the current champion)."""
        if not self._exists(name):
            return []
        return json.loads(self.client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))

    def download(self, name: str, version: str, dst: str | Path) -> Path:
        """The version's model directory, copied to ``dst`` (reused when already there)."""
        return self.locate(name, version, dst)

    # ------------------------------------------------------------------ changes
    def register(self, name: str, model_dir: str | Path, *, run_id: str, metrics: dict[str, float],
                 params: dict[str, Any], files: dict[str, Any]) -> str:  # fmt: skip
        """Log ``model_dir`` (+ metrics, params, JSON ``files``) as an MLflow run; return the new version."""
        existing = self.find_run_version(name, run_id)
        if existing is not None:
            return existing
        if not self._exists(name):
            self.client.create_registered_model(name, tags={HISTORY_TAG: "[]"})
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT, self.artifact_root)
        run = self.client.create_run(exp_id, run_name=run_id, tags={RUN_TAG: run_id})
        rid = run.info.run_id
        for key, value in metrics.items():
            if value is not None:
                self.client.log_metric(rid, key, float(value))
        for key, value in params.items():
            self.client.log_param(rid, key, str(value)[:6000])
        for fname, data in files.items():
            self.client.log_dict(rid, data, fname)
        self.client.log_artifacts(rid, str(model_dir), "model")
        self.client.set_terminated(rid)
        v = self.client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=rid,
                                             tags={RUN_TAG: run_id})  # fmt: skip
        return str(v.version)

    def set_challenger(self, name: str, version: str) -> None:
        self.client.set_registered_model_alias(name, CHALLENGER, str(version))

    def promote(self, name: str, version: str) -> None:
        """Point ``champion`` at ``version`` and append it to the champion history (no-op if already there)."""
        self.version_info(name, version)  # RegistryError for an unknown version
        if self.version_by_alias(name, CHAMPION) == str(version):
            return
        history = self.history(name)
        if not history or history[-1] != str(version):  # a retried promotion is recorded once
            self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, str(version)]))
        self.client.set_registered_model_alias(name, CHAMPION, str(version))

    def rollback(self, name: str) -> str:
        """Point ``champion`` back at the previous champion; returns that version."""
        history = self.history(name)
        if len(history) < 2:
            raise RegistryError(f"model {name!r} has no earlier champion to roll back to (history {history})")
        previous = history[-2]
        self.client.set_registered_model_alias(name, CHAMPION, previous)
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
        return previous

    def _exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            return False
        return True
