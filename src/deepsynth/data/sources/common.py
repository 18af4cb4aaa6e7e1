"""Helpers shared by the readers: turning a row dict into a Sample."""

from __future__ import annotations

import json
from typing import Any

from deepsynth.data.sample import Sample

CORE_KEYS = ("id", "text", "image", "language", "subset", "level")


def parse_meta(value: Any) -> dict[str, Any]:
    """A ``meta`` column stored as JSON text or a dict."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    try:
        out = json.loads(value)
    except (TypeError, ValueError):
        return {"meta": value}
    return out if isinstance(out, dict) else {"meta": out}


def make_sample(row: dict[str, Any], *, sample_id: str, loader: Any, dataset: str, origin: str) -> Sample:
    """Sample from a row: core keys become fields, every other key goes to ``meta``."""
    meta = {k: v for k, v in row.items() if k not in CORE_KEYS and k != "meta"}
    meta.update(parse_meta(row.get("meta")))
    meta.setdefault("dataset", dataset)
    meta["origin"] = origin
    return Sample(
        id=sample_id,
        text=row["text"],
        image_loader=loader,
        language=row.get("language") or None,
        subset=row.get("subset") or None,
        level=row.get("level") or "line",
        meta=meta,
    )
