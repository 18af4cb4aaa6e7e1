"""Reading order for detected text boxes.

A recursive XY-cut splits the page at wide vertical gutters (columns, read left to right) and at horizontal
gaps (blocks, read top to bottom); inside each block, boxes that overlap vertically form one row, rows go
top-to-bottom and boxes left-to-right.
"""

from __future__ import annotations

from typing import Any


def _extent(box: Any) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a 4-point polygon or an [x0, y0, x1, y1] box."""
    if len(box) == 4 and not hasattr(box[0], "__len__"):
        x0, y0, x1, y1 = (float(v) for v in box)
        return x0, y0, x1, y1
    xs = [float(p[0]) for p in box]
    ys = [float(p[1]) for p in box]
    return min(xs), min(ys), max(xs), max(ys)


def boxes_to_lines(items: list[dict[str, Any]], *, overlap: float = 0.5) -> list[dict[str, Any]]:
    """Group ``{"text", "box", "confidence"}`` items into lines.

    Two boxes share a row when their vertical overlap is at least ``overlap`` of the shorter box's height.
    Returns ``[{"text", "box": [x0, y0, x1, y1], "confidence", "words": n}]`` in reading order.
    """
    placed = sorted(
        ((_extent(it["box"]), it) for it in items if str(it.get("text", "")).strip()),
        key=lambda e: ((e[0][1] + e[0][3]) / 2, e[0][0]),
    )
    rows: list[list[tuple[tuple[float, float, float, float], dict[str, Any]]]] = []
    for ext, it in placed:
        for row in rows:
            ry0 = min(e[1] for e, _ in row)
            ry1 = max(e[3] for e, _ in row)
            inter = min(ry1, ext[3]) - max(ry0, ext[1])
            shorter = max(min(ry1 - ry0, ext[3] - ext[1]), 1e-6)
            if inter / shorter >= overlap:
                row.append((ext, it))
                break
        else:
            rows.append([(ext, it)])
    lines = []
    for row in rows:
        row.sort(key=lambda e: e[0][0])
        confs = [it["confidence"] for _, it in row if it.get("confidence") is not None]
        lines.append({
            "text": " ".join(str(it["text"]).strip() for _, it in row),
            "box": [min(e[0] for e, _ in row), min(e[1] for e, _ in row),
                    max(e[2] for e, _ in row), max(e[3] for e, _ in row)],
            "confidence": sum(confs) / len(confs) if confs else None,
            "words": len(row),
        })  # fmt: skip
    lines.sort(key=lambda ln: (ln["box"][1] + ln["box"][3]) / 2)
    return lines


def _gaps(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Empty stretches between the union of 1-D intervals, as (start, end), in order."""
    gaps, reach = [], None
    for a, b in sorted(intervals):
        if reach is not None and a > reach:
            gaps.append((reach, a))
        reach = b if reach is None else max(reach, b)
    return gaps


def _xy_cut(
    entries: list[tuple[tuple[float, float, float, float], dict[str, Any]]], gutter: float
) -> list[list]:
    """Recursive XY-cut at the widest gap: a vertical gutter (>= ``gutter`` wide) or any horizontal gap."""
    if len(entries) <= 1:
        return [entries]
    x_gap = max(_gaps([(e[0], e[2]) for e, _ in entries]), key=lambda g: g[1] - g[0], default=None)
    if x_gap is not None and x_gap[1] - x_gap[0] < gutter:
        x_gap = None
    y_gap = max(_gaps([(e[1], e[3]) for e, _ in entries]), key=lambda g: g[1] - g[0], default=None)
    if x_gap is None and y_gap is None:
        return [entries]
    if x_gap is not None and (y_gap is None or x_gap[1] - x_gap[0] >= y_gap[1] - y_gap[0]):
        first = [en for en in entries if en[0][2] <= x_gap[0]]
        second = [en for en in entries if en[0][2] > x_gap[0]]
    else:
        assert y_gap is not None
        first = [en for en in entries if en[0][3] <= y_gap[0]]
        second = [en for en in entries if en[0][3] > y_gap[0]]
    return _xy_cut(first, gutter) + _xy_cut(second, gutter)


def reading_order(items: list[dict[str, Any]], *, gutter_heights: float = 1.0) -> list[dict[str, Any]]:
    """Lines (as in :func:`boxes_to_lines`) of a possibly multi-column page, in reading order.

    A vertical gap wider than ``gutter_heights`` x the median box height is treated as a column gutter.
    """
    entries = [(_extent(it["box"]), it) for it in items if str(it.get("text", "")).strip()]
    if not entries:
        return []
    heights = sorted(e[3] - e[1] for e, _ in entries)
    gutter = gutter_heights * max(heights[len(heights) // 2], 1.0)
    lines: list[dict[str, Any]] = []
    for block in _xy_cut(entries, gutter):
        lines.extend(boxes_to_lines([it for _, it in block]))
    return lines
