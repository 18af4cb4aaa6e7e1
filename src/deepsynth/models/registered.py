"""Registered models: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` in MLflow's Model Registry.

Reading only: resolve an alias to the version it points at, and locate that version's model directory (in
place for a local artifact store, else downloaded once into a cache). The server loads the directory with
the one loader (:func:`deepsynth.models.registry.load_engine`) and polls the alias to follow promotions and
rollbacks; the loop's ``ModelRegistry`` adds versions and moves aliases on top of this class.

    reader = RegistryReader("sqlite:///runs/loop/mlflow.db")
    found = reader.fetch("models:/deepsynth-ocr-fraktur@champion")   # RegisteredVersion(version="3", path=...)
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsynth.models.registry import ModelLoadError

SCHEME = "models:/"
_URI = re.compile(r"^models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[^/@\s]+)|/(?P<version>[0-9]+))$")


class RegistryError(ModelLoadError):
    """A registry lookup or change that cannot be done: unknown model, alias or version, nothing to roll
    back to. The message names what exists instead."""


def is_model_uri(spec: str) -> bool:
    return spec.startswith(SCHEME)


@dataclass(frozen=True)
class ModelURI:
    """``models:/NAME@ALIAS`` (follows the alias) or ``models:/NAME/VERSION`` (pinned)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelURI:
        m = _URI.match(uri)
        if m is None:
            raise RegistryError(
                f"{uri!r} is not a registered model URI: write models:/NAME@ALIAS (e.g. "
                "models:/deepsynth-ocr@champion) or models:/NAME/VERSION"
            )
        return cls(m["name"], m["alias"], m["version"])

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias else f"{SCHEME}{self.name}/{self.version}"


@dataclass(frozen=True)
class RegisteredVersion:
    """What a model URI resolved to: the registered model, the alias followed (None when pinned), the
    version and its local model directory."""

    name: str
    alias: str | None
    version: str
    path: Path

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "version": self.version}


def tracking_uri(explicit: str | None = None) -> str | None:
    """The registry URI to read: ``explicit`` (a ``--tracking-uri``), else ``$MLFLOW_TRACKING_URI``."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or None


def default_cache_dir() -> Path:
    """Where versions from a remote artifact store are downloaded (``$XDG_CACHE_HOME/deepsynth/registry``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepsynth" / "registry"


class RegistryReader:
    """Read-only access to one MLflow tracking/registry URI (a local SQLite store or a tracking server)."""

    def __init__(self, tracking_uri: str, cache_dir: str | Path | None = None, *, create: bool = False):
        """``create=False``: a ``sqlite:///`` URI whose database file does not exist is a RegistryError
        (MLflow would silently create an empty registry there)."""
        db = _sqlite_path(tracking_uri)
        if not create and db is not None and not db.is_file():
            raise RegistryError(
                f"no model registry at {tracking_uri} (file {db} does not exist); give the tracking URI "
                "the loop writes to (its config's tracking_uri, default sqlite:///WORKDIR/mlflow.db)"
            )
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def version_by_alias(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def resolve(self, uri: str | ModelURI) -> tuple[ModelURI, str]:
        """The parsed URI and the version it names now (RegistryError naming what exists otherwise)."""
        from mlflow.exceptions import MlflowException

        ref = uri if isinstance(uri, ModelURI) else ModelURI.parse(uri)
        try:
            model = self.client.get_registered_model(ref.name)
        except MlflowException:
            known = [m.name for m in self.client.search_registered_models(max_results=50)]
            raise RegistryError(
                f"{ref}: no registered model {ref.name!r} in {self.uri} "
                f"(registered: {', '.join(known) or 'none'})"
            ) from None
        if ref.alias is not None:
            version = (model.aliases or {}).get(ref.alias)
            if version is None:
                have = ", ".join(f"{a} -> v{v}" for a, v in sorted((model.aliases or {}).items()))
                raise RegistryError(
                    f"{ref}: model {ref.name!r} has no alias {ref.alias!r} (aliases: {have or 'none'})"
                )
            return ref, str(version)
        try:
            self.client.get_model_version(ref.name, ref.version)
        except MlflowException:
            raise RegistryError(f"{ref}: model {ref.name!r} has no version {ref.version!r}") from None
        return ref, str(ref.version)

    def locate(self, name: str, version: str, dst: str | Path | None = None) -> Path:
        """The version's model directory: in place when the artifact store is a local folder (and no
        ``dst`` is asked for), else downloaded to ``dst`` (default: the cache), reused when complete there."""
        import mlflow

        source = self.client.get_model_version_download_uri(name, str(version))
        local = _local_path(source)
        if dst is None and local is not None and local.is_dir():
            return local
        dst = Path(dst) if dst is not None else self.cache_dir / _slug(self.uri) / name / f"v{version}"
        if not dst.is_dir() or not any(
            dst.iterdir()
        ):  # download next to it, then rename: a killed download is never reused
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
            try:
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(tmp), tracking_uri=self.uri
                )
                tmp.rename(dst)
            except FileExistsError:
                pass  # another process finished the same download first
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        inner = dst / "model"
        return inner if inner.is_dir() else dst

    def fetch(self, uri: str | ModelURI) -> RegisteredVersion:
        """Resolve ``uri`` and locate its version's directory."""
        ref, version = self.resolve(uri)
        return RegisteredVersion(ref.name, ref.alias, version, self.locate(ref.name, version))


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))  # sqlite:////abs/path.db or sqlite:///relative.db


def _local_path(uri: str) -> Path | None:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(uri) if not parsed.scheme else None


def _slug(uri: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", uri).strip("_")[:120]
