"""``deepsynth eval leaderboard RUN_DIR...``: engines ranked per dataset and per group (subset, language, level)
with 95% bootstrap CIs, and a mark where neighbours are not significantly different.

Each run is rescored from its predictions with one normalisation profile. Neighbours are compared with a
paired bootstrap on the samples both runs scored (unpaired when they share none); "≈" marks a row whose CI of
the difference to the row above contains 0. Written as ``summary.json``, ``leaderboard.md`` and
``leaderboard.html``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepsynth.evaluation.runs import (
    LOWER_IS_BETTER,
    Run,
    Scored,
    check_group_keys,
    common_profile,
    load_runs,
    paired_delta,
    score,
    select,
)

SUMMARY = "summary.json"
MARKDOWN = "leaderboard.md"
HTML = "leaderboard.html"
SHOWN = ("cer", "wer", "ned", "exact_match")  # columns of the dataset tables (every rate is in summary.json)
TITLES = {"cer": "CER", "wer": "WER", "ned": "NED", "exact_match": "exact lines", "repetition_rate": "repetition",
          "truncation_rate": "truncation", "mean_sample_cer_clipped": "mean line CER"}  # fmt: skip


def _rank(
    runs: Sequence[Run], profile: str, metric: str, n_resamples: int, dataset: str, key: str | None = None,
    value: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    scored: list[Scored] = []
    for run in runs:
        records = select(run, dataset, key, value)
        if records:
            scored.append(score(run, records, profile, n_resamples))
    sign = 1 if LOWER_IS_BETTER[metric] else -1
    scored.sort(key=lambda s: (s.summary[metric] is None, sign * (s.summary[metric] or 0), s.run.label))
    rows = []
    for i, s in enumerate(scored):
        row: dict[str, Any] = {
            "rank": i + 1,
            "engine": s.run.label,
            "run": str(s.run.path),
            "n": s.summary["n"],
        }
        for k in LOWER_IS_BETTER:
            row[k] = s.summary.get(k)
            row[f"{k}_ci"] = s.summary.get(f"{k}_ci")
        if i:
            d = paired_delta(scored[i - 1], s, metric, n_resamples=n_resamples) if n_resamples else None
            row["vs_above"] = d
            row["tied_with_above"] = d is not None and d["ci_low"] <= 0 <= d["ci_high"]
        rows.append(row)
    return rows


def build_leaderboard(
    run_dirs: Sequence[str | Path],
    *,
    by: Sequence[str] = ("subset",),
    metric: str = "cer",
    normalize: str | None = None,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Rank the runs per dataset and per value of each ``by`` key; raises RunDirError / ValueError (one line)."""
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(LOWER_IS_BETTER)})")
    if not run_dirs:
        raise ValueError("give at least one run directory")
    runs = load_runs(run_dirs)
    check_group_keys(runs, by)
    profile = common_profile(runs, normalize)
    sections = []
    for dataset in sorted({d for r in runs for d in r.datasets}):
        present = [r for r in runs if dataset in r.datasets]
        groups: dict[str, dict[str, Any]] = {}
        for key in (k for k in by if k != "dataset"):
            values = sorted(
                {str(x[key]) for r in present for x in select(r, dataset) if x.get(key) is not None}
            )
            groups[key] = {v: _rank(present, profile, metric, n_resamples, dataset, key, v) for v in values}
        rows = _rank(present, profile, metric, n_resamples, dataset)
        sections.append({"dataset": dataset, "rows": rows, "groups": groups})
    options = [*(f"--by {k}" for k in by), f"--metric {metric}"]
    options += [f"--normalize {normalize}"] if normalize else []
    options += [f"--resamples {n_resamples}"] if n_resamples != 1000 else []
    return {
        "command": " ".join(["deepsynth eval leaderboard", *map(str, run_dirs), *options]),
        "metric": metric,
        "lower_is_better": LOWER_IS_BETTER[metric],
        "normalize": profile,
        "ci_level": 0.95,
        "n_resamples": n_resamples,
        "runs": [{"engine": r.label, "run": str(r.path), "datasets": r.datasets} for r in runs],
        "datasets": sections,
    }


# ---- rendering -------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _with_ci(row: dict[str, Any], key: str) -> str:
    ci = row.get(f"{key}_ci")
    text = _pct(row.get(key))
    return f"{text} ({100 * ci[0]:.2f}–{100 * ci[1]:.2f})" if ci else text


def _delta(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    kind = "" if d.get("paired", True) else ", unpaired"
    return f"{100 * d['delta']:+.2f} pp ({100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}{kind})"


def _ranking(rows: list[dict[str, Any]], metric: str) -> str:
    """'a 0.50% ≈ b 0.52% < c 2.10%': ≈ not significantly different, < / > significantly better."""
    better = "<" if LOWER_IS_BETTER[metric] else ">"
    parts = []
    for row in rows:
        if row["rank"] > 1:
            parts.append("≈" if row.get("tied_with_above") or row.get("vs_above") is None else better)
        parts.append(f"{row['engine']} {_with_ci(row, metric)}")
    return " ".join(parts)


def _tables(board: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, header, rows) of every table, shared by the Markdown and HTML renderings."""
    metric = board["metric"]
    out = []
    for section in board["datasets"]:
        n = max((r["n"] for r in section["rows"]), default=0)
        header = [
            "#",
            "engine",
            "n",
            *(f"{TITLES[k]} (95% CI)" for k in SHOWN),
            f"Δ {TITLES[metric]} vs above",
        ]
        rows = [
            [f"{r['rank']}{' ≈' if r.get('tied_with_above') else ''}", r["engine"], str(r["n"]),
             *(_with_ci(r, k) for k in SHOWN), _delta(r.get("vs_above"))]
            for r in section["rows"]
        ]  # fmt: skip
        out.append((f"{section['dataset']} ({n} samples)", header, rows))
        for key, groups in section["groups"].items():
            body = [
                [v, str(max(r["n"] for r in rows_)), _ranking(rows_, metric)] for v, rows_ in groups.items()
            ]
            out.append((f"{section['dataset']} · by {key}", [key, "n", f"ranking by {TITLES[metric]}"], body))
    return out


def _intro(board: dict[str, Any]) -> str:
    direction = "lower" if board["lower_is_better"] else "higher"
    return (
        f"Ranked by {TITLES[board['metric']]} ({direction} is better), normalisation `{board['normalize']}`, "
        f"95% bootstrap intervals ({board['n_resamples']} resamples). `≈` marks a row not significantly "
        "different from the row above (95% CI of the paired difference on the samples both runs scored contains "
        "0; unpaired when they share none); in group rankings `<`/`>` means significantly better."
    )


def to_markdown(board: dict[str, Any]) -> str:
    def cell(x: str) -> str:
        return x.replace("|", "\\|")

    lines = ["# Leaderboard", "", _intro(board), "", f"Made by `{board['command']}`.", "", "Runs:"]
    lines += [f"- `{r['engine']}`: `{r['run']}` ({', '.join(r['datasets'])})" for r in board["runs"]]
    for heading, header, rows in _tables(board):
        level = "###" if " · by " in heading else "##"
        lines += ["", f"{level} {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_html(board: dict[str, Any]) -> str:
    from deepsynth.evaluation.report import _CSS

    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>Leaderboard</title><style>{_CSS}</style>",
             "<h1>Leaderboard</h1>", f"<p class='meta'>{e(_intro(board))}</p><ul>"]  # fmt: skip
    parts += [f"<li><code>{e(r['engine'])}</code>: {e(r['run'])}</li>" for r in board["runs"]]
    parts.append("</ul>")
    for heading, header, rows in _tables(board):
        tag = "h3" if " · by " in heading else "h2"
        parts.append(f"<{tag}>{e(heading)}</{tag}><table><tr>")
        parts += [f"<th class='l'>{e(h)}</th>" for h in header]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td class='l'>{e(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts) + "\n"


def write_leaderboard(board: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write summary.json, leaderboard.md and leaderboard.html into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {SUMMARY: json.dumps(board, indent=2, ensure_ascii=False) + "\n", MARKDOWN: to_markdown(board),
             HTML: to_html(board)}  # fmt: skip
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return [out / name for name in files]
