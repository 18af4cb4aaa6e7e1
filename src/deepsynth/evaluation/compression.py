"""Optical-compression benchmark (DeepSeek-OCR's Fox table): how much text an engine reads back per vision token.

Per page and image mode: the ground truth's text tokens under the engine's own tokenizer, the vision tokens
the engine spends (:mod:`deepsynth.models.tokens`), the compression ratio text / vision tokens, and the
accuracy of the engine's output: **precision = 1 - Levenshtein(hyp, ref) / max(len(hyp), len(ref))** (the
paper reports "edit-distance precision" without a formula; this is the reading public reimplementations use)
and CER, both after the stated normalisation. The table groups pages by text-token bins (rows) and modes
(columns) like the paper's Fox table; written as compression.json, compression.html and compression.png.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from deepsynth.data.sample import Sample, SampleError
from deepsynth.evaluation.metrics import cer, char_counts, ned
from deepsynth.evaluation.normalize import get_normalizer
from deepsynth.models.base import OCREngine
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.tokens import token_counter

PRECISION = "1 - Levenshtein(hyp, ref) / max(len(hyp), len(ref)), after normalisation"
_WIDTHS = (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000)


def auto_bins(values: Sequence[int], n: int = 5) -> list[int]:
    """Bin edges of a round width (10, 20, 50, 100, ...) giving about ``n`` bins over ``values``."""
    lo, hi = min(values), max(values)
    width = next((w for w in _WIDTHS if (hi - lo) / w <= n), _WIDTHS[-1])
    start = lo // width * width
    return list(range(start, hi // width * width + 2 * width, width))


def _bin(value: int, edges: Sequence[int]) -> str | None:
    for lo, hi in zip(edges, edges[1:], strict=False):
        if lo <= value < hi:
            return f"{lo}-{hi}"
    return None


def fox_table(rows: list[dict[str, Any]], edges: Sequence[int], modes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per text-token bin: per mode the pages, mean vision tokens, mean compression and precision."""
    table = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        label, cells = f"{lo}-{hi}", {}
        for mode in modes:
            sel = [r for r in rows if r["mode"] == mode and r["bin"] == label]
            ratios = [r["compression"] for r in sel if r["compression"] is not None]
            if sel:
                cells[mode] = {
                    "pages": len(sel),
                    "vision_tokens": sum(r["vision_tokens"] for r in sel) / len(sel),
                    "compression": sum(ratios) / len(ratios) if ratios else None,
                    "precision": sum(r["precision"] for r in sel) / len(sel),
                    "cer": sum(r["char_errors"] for r in sel) / max(1, sum(r["ref_chars"] for r in sel)),
                }
        if cells:
            table.append({"text_tokens": label, "modes": cells})
    return table


def compression_benchmark(
    engine: OCREngine,
    samples: Iterable[Sample],
    *,
    modes: Sequence[str] | None = None,
    bins: Sequence[int] | None = None,
    normalize: str = "ocr_standard",
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Run ``engine`` on every sample in every mode; ValueError for an engine or mode it cannot count."""
    import dataclasses

    counter = token_counter(engine)
    available = counter.modes()
    if max_new_tokens:
        base = {m: g or GenerationConfig() for m, g in available.items()}
        available = {m: dataclasses.replace(g, max_new_tokens=max_new_tokens) for m, g in base.items()}
    chosen = list(modes or available)
    unknown = [m for m in chosen if m not in available]
    name = getattr(engine, "name", type(engine).__name__)
    if unknown:
        raise ValueError(f"engine {name}: unknown mode {unknown[0]!r} (it has {', '.join(available)})")
    norm = get_normalizer(normalize)
    rows, skipped = [], []
    for s in samples:
        try:
            image = s.image
        except SampleError as exc:
            skipped.append({"id": s.id, "reason": exc.reason})
            continue
        text_tokens = counter.text_tokens(s.text)
        for mode in chosen:
            gen = available[mode]
            vision = counter.vision_tokens(image, gen)
            hyp = engine.recognize([image], gen)[0].text
            ref_n, hyp_n = norm(s.text), norm(hyp)
            errors, ref_chars, _ = char_counts(ref_n, hyp_n)
            rows.append({
                "id": s.id, "mode": mode, "text_tokens": text_tokens, "vision_tokens": vision,
                "compression": text_tokens / vision if vision else None, "precision": 1.0 - ned(ref_n, hyp_n),
                "cer": cer(ref_n, hyp_n), "char_errors": errors, "ref_chars": ref_chars,
            })  # fmt: skip
        s.release()
    if not rows:
        raise ValueError(f"engine {name}: no readable sample to benchmark")
    edges = list(bins) if bins else auto_bins([r["text_tokens"] for r in rows])
    for r in rows:
        r["bin"] = _bin(r["text_tokens"], edges)
    return {
        "engine": name,
        "modes": {m: (available[m].to_dict() if available[m] is not None else None) for m in chosen},
        "normalize": normalize,
        "precision": PRECISION,
        "compression": "ground-truth text tokens / vision tokens",
        "bins": edges,
        "n_pages": len({r["id"] for r in rows}),
        "table": fox_table(rows, edges, chosen),
        "pages": rows,
        "skipped": skipped,
    }


def _plot(result: dict[str, Any]) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in result["modes"]:
        pts = [
            (r["compression"], r["precision"])
            for r in result["pages"]
            if r["mode"] == mode and r["compression"]
        ]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=mode, alpha=0.7)
    ax.set_xlabel("compression (text tokens / vision tokens)")
    ax.set_ylabel("precision (1 - NED)")
    ax.set_title(result["engine"])
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def to_html(result: dict[str, Any], png: bytes | None) -> str:
    import base64

    from deepsynth.evaluation.report import _CSS

    e = html.escape
    modes = list(result["modes"])
    head = "".join(f"<th colspan=3>{e(m)}</th>" for m in modes)
    sub = "<th>pages</th><th>precision</th><th>compression</th>" * len(modes)
    body = []
    for row in result["table"]:
        cells = []
        for m in modes:
            c = row["modes"].get(m)
            cells.append("<td></td>" * 3 if c is None else
                         f"<td>{c['pages']}</td><td>{100 * c['precision']:.1f}%</td><td>{_ratio(c['compression'])}</td>")  # fmt: skip
        body.append(f"<tr><td class='l'>{e(row['text_tokens'])}</td>{''.join(cells)}</tr>")
    img = (
        f"<img alt='precision vs compression' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        if png
        else ""
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>Optical compression</title><style>{_CSS}</style>"
        f"<h1>Optical compression: {e(result['engine'])}</h1><p class='meta'>{result['n_pages']} pages · "
        f"normalize={e(result['normalize'])} · precision = {e(result['precision'])} · compression = "
        f"{e(result['compression'])}</p><table><tr><th class='l' rowspan=2>text tokens</th>{head}</tr>"
        f"<tr>{sub}</tr>{''.join(body)}</table>{img}\n"
    )


def write_compression(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """compression.json, compression.html (table + embedded plot) and compression.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = _plot(result)
    files = [out / "compression.json", out / "compression.html"]
    files[0].write_text(
        json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    files[1].write_text(to_html(result, png), encoding="utf-8")
    if png:
        files.append(out / "compression.png")
        files[2].write_bytes(png)
    return files
