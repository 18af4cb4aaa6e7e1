"""The loop's memory (``WORKDIR/state.json``): inbox entries seen, per-type accounting, holdout decisions, runs.

The trigger counts **documents**: a sample's document is its ``page_id`` (a page row is its own document), and a
sample without one counts as a document of its own.

Written atomically (temporary file, fsync, rename), so a kill at any point leaves the previous state or the new
one. A page's holdout membership is decided the first time the page is seen and never recomputed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepsynth.atomic import write_file
from deepsynth.data import Sample, group_key, split_of

STATE = "state.json"
UNTYPED = "untyped"  # the type of samples with neither doc_type nor subset


@dataclass
class TypeState:
    """One document type: its samples (id -> in holdout), documents (id -> samples), page holdout decisions and
    its last run."""

    samples: dict[str, bool] = field(default_factory=dict)
    documents: dict[str, int] = field(default_factory=dict)
    holdout_groups: dict[str, bool] = field(default_factory=dict)
    labelled_at_last_run: int = 0  # samples
    documents_at_last_run: int = 0
    last_run_id: str | None = None
    last_run_at: float | None = None  # unix time the last run started

    @property
    def labelled(self) -> int:
        return len(self.samples)

    @property
    def new_since_last_run(self) -> int:
        return self.labelled - self.labelled_at_last_run

    @property
    def n_documents(self) -> int:
        return len(self.documents)

    @property
    def new_documents(self) -> int:
        """Documents labelled since the type's last run (what the trigger counts)."""
        return self.n_documents - self.documents_at_last_run

    @property
    def holdout_size(self) -> int:
        return sum(self.samples.values())


@dataclass
class LoopState:
    """Everything the loop remembers between passes."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # inbox entry name -> what it held
    types: dict[str, TypeState] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)  # run ids, oldest first
    pending: str | None = None  # the run a pass started and has not finished
    last_pass_at: float | None = None  # unix time the last pass completed (a failed pass leaves it)

    def type(self, name: str) -> TypeState:
        return self.types.setdefault(name, TypeState())

    def add_sample(self, sample: Sample, holdout_key: str, fraction: float, seed: int) -> bool:
        """Count a labelled sample once (by id); returns whether it belongs to the holdout."""
        t = self.type(doc_type(sample))
        if sample.id in t.samples:
            return t.samples[sample.id]
        group = group_key(sample, holdout_key)
        if group not in t.holdout_groups:  # decided once, recorded, never recomputed
            t.holdout_groups[group] = is_holdout(doc_type(sample), group, fraction, seed)
        t.samples[sample.id] = t.holdout_groups[group]
        doc = document_id(sample)
        t.documents[doc] = t.documents.get(doc, 0) + 1
        return t.samples[sample.id]


def doc_type(sample: Sample) -> str:
    return sample.doc_type or UNTYPED


def document_id(sample: Sample) -> str:
    """The document a sample belongs to: its ``page_id``, else the sample itself (a page row is its own page)."""
    return str(sample.meta.get("page_id") or sample.id)


def is_holdout(type_name: str, group: str, fraction: float, seed: int) -> bool:
    """The seeded hash that decides a new page's holdout membership (the data layer's split hash)."""
    return split_of(f"{type_name}\x00{group}", seed, (1.0 - fraction, fraction, 0.0)) == "val"


def load_state(workdir: str | Path) -> LoopState:
    path = Path(workdir) / STATE
    if not path.is_file():
        return LoopState()
    raw = json.loads(path.read_text(encoding="utf-8"))
    types = {k: _type_state(v) for k, v in raw.pop("types", {}).items()}
    return LoopState(types=types, **raw)


def _type_state(raw: dict[str, Any]) -> TypeState:
    if "documents" not in raw:  # a state written before documents were counted: one document per sample
        raw = {**raw, "documents": dict.fromkeys(raw.get("samples", {}), 1),
               "documents_at_last_run": raw.get("labelled_at_last_run", 0)}  # fmt: skip
    return TypeState(**raw)


def save_state(workdir: str | Path, state: LoopState) -> None:
    write_json_atomic(Path(workdir) / STATE, asdict(state))


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON written with :func:`deepsynth.atomic.write_file` (old or new content, never torn)."""
    write_file(path, json.dumps(data, indent=1, ensure_ascii=False, default=str).encode())
