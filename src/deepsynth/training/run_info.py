"""What a run needs to be reproduced: ``run.yaml`` with config, git commit, package versions, data fingerprints."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

PACKAGES = ("deepsynth", "torch", "transformers", "peft", "accelerate", "safetensors", "rapidocr", "numpy")


def git_info(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the repository around ``cwd`` (None values outside a git checkout)."""
    cwd = str(cwd or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def write_run_yaml(run_dir: str | Path, config: dict[str, Any], **facts: Any) -> Path:
    """Write (or, on resume, extend) ``run_dir/run.yaml``. Earlier starts are kept under ``history``."""
    path = Path(run_dir) / "run.yaml"
    entry = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "git": git_info(),
        "packages": package_versions(),
        "host": {"platform": platform.platform(), "machine": platform.machine()},
        **facts,
    }
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        history = old.pop("history", [])
        entry["history"] = [*history, old]
    path.write_text(yaml.safe_dump(entry, sort_keys=False, allow_unicode=True))
    return path
