"""Helpers shared by the readers: parsing a JSON row, checking its values, turning it into a Sample."""

from __future__ import annotations

import json
from typing import Any

from deepsynth.data.sample import Sample

CORE_KEYS = ("id", "text", "image", "language", "subset", "level")
MAX_DEPTH = 32  # JSON nesting a row may have; deeper values are refused before anything recurses into them


class RowError(ValueError):
    """A row that cannot become a Sample: ``reason`` for the report, ``kind`` one of report.SKIP_KINDS."""

    def __init__(self, reason: str, kind: str = "invalid_json"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def check_values(value: Any, field: str = "row") -> None:
    """Raise RowError for values nested deeper than MAX_DEPTH or strings that are not valid Unicode (lone
    surrogates such as ``"\\ud800"``, which JSON allows but no UTF-8 writer does). Iterative: any depth is safe."""
    stack = [(value, 0, field)]
    while stack:
        v, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            raise RowError(f"invalid JSON: {field!r} nested deeper than {MAX_DEPTH} levels")
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = v[exc.start]
                raise RowError(
                    f"invalid JSON: {key!r} is not valid Unicode (lone surrogate U+{ord(bad):04X} "
                    f"at character {exc.start})"
                ) from None
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append((k, depth + 1, key))
                stack.append((x, depth + 1, k if isinstance(k, str) else key))
        elif isinstance(v, list | tuple):
            stack.extend((x, depth + 1, key) for x in v)


def loads_row(raw: bytes) -> dict[str, Any]:
    """One JSON object from the bytes of a manifest line or a ``.json`` member (a UTF-8 BOM is ignored);
    raises RowError naming what is wrong with it."""
    try:
        row = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise RowError(f"invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise RowError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise RowError("invalid JSON: nested too deeply to parse") from None
    except ValueError as exc:  # e.g. an integer over Python's 4300-digit limit
        raise RowError(f"invalid JSON: {exc}"[:200]) from None
    if not isinstance(row, dict):
        raise RowError(f"invalid JSON: not an object but {type(row).__name__}")
    check_values(row)
    return row


def parse_meta(value: Any) -> dict[str, Any]:
    """A ``meta`` column stored as JSON text or a dict."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    try:
        out = json.loads(value)
    except (TypeError, ValueError, RecursionError):
        return {"meta": value}
    return out if isinstance(out, dict) else {"meta": out}


def _optional_str(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowError(f"invalid field {key!r}: a string, not {type(value).__name__}", "invalid_field")
    return value


def make_sample(row: dict[str, Any], *, sample_id: str, loader: Any, dataset: str, origin: str) -> Sample:
    """Sample from a row: core keys become fields, every other key goes to ``meta``.

    Raises RowError when a core field has the wrong type or a value could not be written back out.
    """
    meta = {k: v for k, v in row.items() if k not in CORE_KEYS and k != "meta"}
    meta.update(parse_meta(row.get("meta")))
    meta.setdefault("dataset", dataset)
    meta["origin"] = origin
    sample = Sample(
        id=sample_id,
        text=row["text"],
        image_loader=loader,
        language=_optional_str(row, "language"),
        subset=_optional_str(row, "subset"),
        level=_optional_str(row, "level") or "line",
        meta=meta,
    )
    check_values([sample.id, sample.text, meta])
    return sample
