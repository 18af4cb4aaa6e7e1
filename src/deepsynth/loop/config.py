"""``LoopConfig``: the loop's policy in one YAML file (first line: the command that runs it).

Paths are relative to the working directory, like recipes. Loaded with :func:`load_loop_config`, which also
accepts ``key=value`` overrides (``trigger.min_new=20``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from deepsynth.config import ConfigError, load_config

MODES = ("specialise", "shared")


@dataclass
class TriggerSettings:
    """When a type gets a fine-tune: ``min_new`` new labelled documents since its last run, at least
    ``min_interval_minutes`` after that run, and (with ``target_mix``) only while the labelled documents' mix of
    types is within ``mix_tolerance`` of the target shares. A document is a ``page_id`` (a sample without one
    counts as its own document)."""

    min_new: int = 50  # new labelled documents of a type since its last run
    target_mix: dict[str, float] = field(default_factory=dict)  # type -> share, e.g. receipts: 0.4
    mix_tolerance: float = 0.10  # absolute share points, 0.10 = ±10
    min_interval_minutes: float = 60.0
    mode: str = "specialise"  # specialise: one model per type | shared: one model over the mix

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"trigger.mode must be one of {'|'.join(MODES)}, got {self.mode!r}")
        if self.min_new < 1:
            raise ConfigError(f"trigger.min_new must be >= 1, got {self.min_new}")
        if self.target_mix and abs(sum(self.target_mix.values()) - 1.0) > 1e-6:
            raise ConfigError(
                f"trigger.target_mix shares must sum to 1, got {sum(self.target_mix.values()):g}"
            )
        if not 0 <= self.mix_tolerance <= 1:
            raise ConfigError(f"trigger.mix_tolerance must be within [0, 1], got {self.mix_tolerance}")


@dataclass
class HoldoutSettings:
    """A page joins the holdout when the seeded hash of its group key falls under ``fraction`` (decided once)."""

    fraction: float = 0.15
    seed: int = 0
    key: str = (
        "page_id"  # group key (page_id, falling back to subset then id; or id, writer, any manifest key)
    )
    max_eval: int | None = 300  # holdout samples scored per type by the gate (the first by id), None = all

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ConfigError(f"holdout.fraction must be within (0, 1), got {self.fraction}")


@dataclass
class GateSettings:
    """Promote only if the triggering type's CER improves with the CI excluding 0 and no guarded type's CER
    change has a CI upper bound above ``tolerance_cer_points`` (percentage points). Every type's holdout is
    scored and recorded; ``guard: served`` blocks on the types the model will serve (in specialise mode its own
    type: the others keep their own champions), ``guard: all`` on every type."""

    def __post_init__(self) -> None:
        if self.guard not in ("served", "all"):
            raise ConfigError(f"gate.guard must be served|all, got {self.guard!r}")

    tolerance_cer_points: float = 0.5
    guard: str = (
        "served"  # types whose worsening blocks: served (specialise: its own type; shared: all) | all
    )
    resamples: int = 1000
    level: float = 0.95
    normalize: str = "none"
    batch_size: int = 16


@dataclass
class LoopConfig:
    """One improvement loop: where data arrives, how to train, when to trigger, how to gate, where to register."""

    name: str = "deepsynth-ocr"  # registered model name (specialise mode: NAME-TYPE per type)
    inbox: str = "inbox"  # watched folder: each file or folder in it is one source (any readable format)
    workdir: str = "runs/loop"  # state.json, run records, training runs, gate evaluations
    tracking_uri: str | None = None  # MLflow tracking/registry URI; None = sqlite:///WORKDIR/mlflow.db
    recipe: str = "configs/ppocr_finetune.yaml"  # the training recipe (deepsynth train's YAML)
    overrides: list[str] = field(default_factory=list)  # key=value applied to the recipe
    trigger: TriggerSettings = field(default_factory=TriggerSettings)
    holdout: HoldoutSettings = field(default_factory=HoldoutSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    watch_interval_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ConfigError(f"name must be letters, digits, '_', '-' or '.', got {self.name!r}")

    @property
    def registry_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(Path(self.workdir) / 'mlflow.db').resolve()}"

    def model_name(self, doc_type: str | None) -> str:
        """The registered model that serves ``doc_type`` (specialise) or every type (shared)."""
        if self.trigger.mode == "shared" or doc_type is None:
            return self.name
        return f"{self.name}-{safe_name(doc_type)}"


def safe_name(text: str) -> str:
    """``text`` with every character MLflow may refuse in a model or metric name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def load_loop_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoopConfig:
    """The loop config from YAML plus ``key=value`` overrides; ConfigError names a bad key."""
    return load_config(LoopConfig, path, list(overrides))
