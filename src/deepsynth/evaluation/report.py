"""Self-contained report.html for an evaluation run: summary, breakdowns, plots, confusions, worst samples.

Everything is embedded (PNG plots and sample images as base64 data URIs), so the file can be mailed or
attached to a CI run. Plots use matplotlib's Agg backend; without matplotlib the report has no plots.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from deepsynth.evaluation.alignment import align
from deepsynth.evaluation.metrics import GROUP_KEYS, sample_cer
from deepsynth.evaluation.normalize import get_normalizer

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.meta{color:#555}
.diff{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;line-height:1.6}
del{background:#ffd7d5;color:#82071e;text-decoration:line-through}ins{background:#ccffd8;color:#055d20;text-decoration:none}
.sample{border:1px solid #ddd;border-radius:6px;padding:.6rem;margin:.8rem 0}
.sample .head{margin-bottom:.4rem}.sample .img{margin:0 0 .4rem}
.sample img{display:block;max-width:100%;max-height:480px;height:auto;width:auto;border:1px solid #eee}
"""


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(per_sample: Sequence[float], summary: dict[str, Any]) -> list[tuple[str, str]]:
    if not per_sample:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(list(per_sample), bins=40, range=(0, 1), color="#4c72b0")
    ax.set_xlabel("per-sample CER (clipped at 1)")
    ax.set_ylabel("samples")
    ax.set_yscale("log")
    out.append(("CER histogram", _png(fig)))
    plt.close(fig)
    for kind in GROUP_KEYS:
        groups, title = summary.get(f"per_{kind}") or {}, f"CER by {kind.replace('_', ' ')}"
        if len(groups) < 2:  # one bar says nothing the summary table does not
            continue
        names = sorted(groups, key=lambda g: groups[g]["cer"] or 0)
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1))
        ax.barh(names, [100 * (groups[g]["cer"] or 0) for g in names], color="#dd8452")
        ax.set_xlabel("CER (%)")
        ax.tick_params(axis="y", labelsize=8)
        out.append((title, _png(fig)))
        plt.close(fig)
    return out


def _char_cell(ch: str) -> str:
    """A confusion-table cell: the character, plus its code point when it is not plain ASCII."""
    if not ch:
        return "<i>(none)</i>"
    shown = "␣" if ch == " " else html.escape(ch)
    code = "" if ch.isascii() and ch.isprintable() and ch != " " else f" <small>U+{ord(ch):04X}</small>"
    return f"<code>{shown}</code>{code}"


def diff_html(ref: str, hyp: str) -> str:
    """Character alignment as HTML: deleted reference text in <del>, inserted hypothesis text in <ins>."""
    parts = []
    for op in align(ref, hyp):
        if op.op == "equal":
            parts.append(html.escape(op.ref))
        else:
            if op.ref:
                parts.append(f"<del>{html.escape(op.ref)}</del>")
            if op.hyp:
                parts.append(f"<ins>{html.escape(op.hyp)}</ins>")
    return "".join(parts)


def _table(groups: dict[str, dict[str, Any]], label: str) -> str:
    if not groups:
        return ""
    rows = "".join(
        f"<tr><td class=l>{html.escape(name)}</td><td>{g['n']}</td><td>{_pct(g['cer'])}</td>"
        f"<td>{_pct(g['wer'])}</td><td>{_pct(g['ned'])}</td><td>{_pct(g['exact_match'])}</td></tr>"
        for name, g in sorted(groups.items())
    )
    return (f"<table><tr><th class=l>{label}</th><th>n</th><th>CER</th><th>WER</th><th>NED</th>"
            f"<th>exact</th></tr>{rows}</table>")  # fmt: skip


def thumbnail_jpeg(img: Any, max_width: int = 1000) -> bytes:
    """A small JPEG of a PIL image for embedding in the report."""
    img = img.convert("RGB")
    if img.width > max_width:
        img = img.resize((max_width, max(1, round(img.height * max_width / img.width))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _image_uri(record: dict[str, Any], thumbnails: dict[str, bytes]) -> str | None:
    jpeg = thumbnails.get(record["id"])
    if jpeg is None and record.get("image") and Path(record["image"]).is_file():
        from PIL import Image

        try:
            with Image.open(record["image"]) as img:
                jpeg = thumbnail_jpeg(img)
        except OSError:
            return None
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def render_report(
    result: dict[str, Any],
    records: Iterable[dict[str, Any]],
    *,
    normalize: str = "none",
    thumbnails: dict[str, bytes] | None = None,
    worst: int = 25,
) -> str:
    """The HTML text of a report."""
    thumbnails = thumbnails or {}
    norm = get_normalizer(normalize)
    scores: list[float] = []
    worst_heap: list[tuple[float, int, dict[str, Any]]] = []  # bounded: records stream from disk
    for i, r in enumerate(records):
        if r.get("error") is not None or r.get("hyp") is None:
            continue
        score = sample_cer(norm(r["ref"]), norm(r["hyp"]), clip=True)
        scores.append(score)
        if worst and (len(worst_heap) < worst or score > worst_heap[0][0]):
            (heapq.heappush if len(worst_heap) < worst else heapq.heapreplace)(worst_heap, (score, -i, r))
    esc = html.escape
    ci = ""
    if result.get("cer_ci"):
        lo, hi = result["cer_ci"]
        wlo, whi = result["wer_ci"]
        ci = (f"<tr><td class=l>95% CI (bootstrap)</td><td>{_pct(lo)} – {_pct(hi)}</td>"
              f"<td>{_pct(wlo)} – {_pct(whi)}</td></tr>")  # fmt: skip
    head = (
        f"<h1>OCR evaluation: {esc(str(result.get('engine')))}</h1>"
        f"<p class=meta>data: {esc(', '.join(result.get('dataset') or []) or '–')} · normalisation profile: "
        f"<b>{esc(normalize)}</b> · scored samples: {result.get('n')} · created {esc(str(result.get('created')))}</p>"
    )
    summary = (
        "<h2>Summary</h2><table><tr><th class=l></th><th>CER</th><th>WER</th></tr>"
        f"<tr><td class=l>corpus (micro-average)</td><td>{_pct(result.get('cer'))}</td>"
        f"<td>{_pct(result.get('wer'))}</td></tr>{ci}</table>"
        "<table><tr><th>NED</th><th>exact lines</th><th>repetition</th><th>truncation</th><th>subst.</th>"
        "<th>del.</th><th>ins.</th><th>median s/image</th></tr>"
        f"<tr><td>{_pct(result.get('ned'))}</td><td>{_pct(result.get('exact_match'))}</td>"
        f"<td>{_pct(result.get('repetition_rate'))}</td><td>{_pct(result.get('truncation_rate'))}</td>"
        f"<td>{result.get('substitutions', 0)}</td><td>{result.get('deletions', 0)}</td>"
        f"<td>{result.get('insertions', 0)}</td><td>{result.get('seconds_per_image_median') or '–'}</td></tr></table>"
    )
    groups = "<h2>Breakdowns</h2>" + "".join(
        _table(result.get(f"per_{kind}") or {}, kind.replace("_", " ")) for kind in GROUP_KEYS
    )
    plots = "".join(f"<h3>{t}</h3><img alt='{t}' src='{uri}'>" for t, uri in _plots(scores, result))
    conf_rows = "".join(
        f"<tr><td class=l>{_char_cell(r)}</td><td class=l>{_char_cell(h)}</td><td>{c}</td></tr>"
        for r, h, c in result.get("top_confusions") or []
    )
    confusions = (
        f"<h2>Top character confusions</h2><table><tr><th class=l>reference</th><th class=l>hypothesis</th>"
        f"<th>count</th></tr>{conf_rows}</table>"
        if conf_rows
        else ""
    )
    problems = ""
    bad = (result.get("unreadable") or []) + (result.get("engine_errors") or [])
    excl = result.get("excluded") or {}
    if bad or excl.get("counts"):
        items = "".join(f"<li><code>{esc(e['id'])}</code>: {esc(e['error'])}</li>" for e in bad[:200])
        problems = (
            f"<h2>Not scored</h2><p>{len(bad)} samples failed (unreadable image or engine error); "
            f"excluded by flag: {esc(str(excl.get('counts') or {}))}.</p><ul>{items}</ul>"
        )
    blocks = []
    for score, _, r in sorted(worst_heap, key=lambda t: (-t[0], -t[1])):
        uri = _image_uri(r, thumbnails)
        img = f"<img alt='{esc(r['id'])}' src='{uri}'>" if uri else "<p class=meta>(image not available)</p>"
        blocks.append(  # every card: header line, then the image on its own row, then the diff
            f"<div class=sample><div class=head><b>{esc(r['id'])}</b> <span class=meta>CER {_pct(score)} · "
            f"{esc(str(r.get('subset') or ''))}</span></div><div class=img>{img}</div>"
            f"<div class=diff>{diff_html(norm(r['ref']), norm(r['hyp']))}</div></div>"
        )
    worst_html = (
        f"<h2>Worst {len(blocks)} samples</h2><p class=meta><del>deleted reference text</del> "
        f"<ins>inserted hypothesis text</ins> (after normalisation)</p>{''.join(blocks)}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>DeepSynth OCR report</title>"
        f"<style>{_CSS}</style></head><body>{head}{summary}{groups}<h2>Plots</h2>{plots}{confusions}"
        f"{problems}{worst_html}</body></html>"
    )


def write_report(
    path: str | Path, result: dict[str, Any], records: Sequence[dict[str, Any]], **kw: Any
) -> Path:
    """Render and write report.html; returns its path."""
    path = Path(path)
    path.write_text(render_report(result, records, **kw), encoding="utf-8")
    return path
