"""Gradio web demo (``deepsynth demo-ui``): upload an image or PDF, pick a model, see the text, the first page
with the detected line boxes coloured by confidence (green >= 0.9, orange >= 0.7, red below, grey unknown),
and the timings as a sentence; click a line to read it. With a second model (B) the two readings are shown
side by side, their lines paired and the differences marked (:mod:`deepsynth.inference.compare`). Shipped
line images are offered as examples.

Models are loaded on first use and kept; every request goes through the same :class:`OCRService` guard and
the same input decoding (limits, PDF rendering) as the HTTP API.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsynth.inference.compare import STYLE, comparison_html, marked, pair_lines
from deepsynth.inference.inputs import InputError, decode_file
from deepsynth.inference.limits import ServingLimits
from deepsynth.inference.service import ModelLoadError, OCRService


@dataclass
class Reading:
    """One model's reading of an upload: the text, timings/info, the first page and its lines (each with
    ``text``, ``confidence`` and ``box``; an engine without line boxes gives one line covering the page)."""

    text: str
    info: dict[str, Any] = field(default_factory=dict)
    page: Any = None
    lines: list[dict[str, Any]] = field(default_factory=list)

    def preview(self, selected: int | None = None) -> Any:
        """The first page with the line boxes drawn (``selected`` in blue), or None after an error."""
        return None if self.page is None else annotate(self.page, self.lines, selected)


class DemoBackend:
    """Loads services lazily (one per spec) and runs one upload through a chosen model."""

    def __init__(
        self,
        specs: Sequence[str],
        *,
        limits: ServingLimits | None = None,
        factory: Callable[[str], OCRService] | None = None,
    ):
        if not specs:
            raise ValueError("the demo needs at least one model spec")
        self.specs = list(specs)
        self.limits = limits or ServingLimits()
        self._factory = factory or self._default_factory
        self._services: dict[str, OCRService] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _default_factory(spec: str) -> OCRService:
        from deepsynth.observability import Observability

        return OCRService(spec, obs=Observability(spec, metrics=False))

    def service(self, spec: str) -> OCRService:
        with self._lock:
            if spec not in self._services:
                self._services[spec] = self._factory(spec)
            return self._services[spec]

    def run(self, file_path: str | None, spec: str) -> Reading:
        """Read one uploaded file with ``spec``; errors come back as readable text, never a crash."""
        if not file_path:
            return Reading("Upload an image or a PDF first.")
        if spec not in self.specs:
            return Reading(f"Unknown model {spec!r}.")
        t0 = time.perf_counter()
        path = Path(file_path)
        try:
            pages = decode_file(path.read_bytes(), path.name, None, self.limits)
        except InputError as exc:
            return Reading(f"Cannot read this file: {exc}", {"error": exc.kind})
        t_decode = time.perf_counter()
        try:
            svc = self.service(spec)
        except ModelLoadError as exc:
            return Reading(f"Cannot load model: {exc}", {"error": "model_load"})
        t_load = time.perf_counter()
        preds = svc.recognize([p.image for p in pages])
        t_model = time.perf_counter()
        if len(pages) == 1:
            text = preds[0].text
        else:
            text = "\n\n".join(
                f"--- page {p.page} ---\n{pred.text}" for p, pred in zip(pages, preds, strict=True)
            )
        info = {
            "model": svc.model_id,
            "pages": len(pages),
            "decode_ms": round((t_decode - t0) * 1000, 1),
            "model_load_ms": round((t_load - t_decode) * 1000, 1),
            "model_ms": round((t_model - t_load) * 1000, 1),
            "total_ms": round((time.perf_counter() - t0) * 1000, 1),
        }
        page, first = pages[0].image, preds[0]
        # rapidocr and tesseract name a line's box `box`, ppocr-page its quadrilateral `polygon`
        lines = [{**ln, "box": ln.get("box") or ln.get("polygon")} for ln in first.lines]
        whole = {"text": first.text, "confidence": first.confidence, "box": [0, 0, page.width, page.height]}
        return Reading(text, info, page, [ln for ln in lines if ln["box"]] or [whole])


def confidence_colour(confidence: float | None) -> str:
    """Box colour of a line: green >= 0.9, orange >= 0.7, red below, grey when the engine gives none."""
    if confidence is None:
        return "#888888"
    return "#1a9850" if confidence >= 0.9 else "#f28e2b" if confidence >= 0.7 else "#d73027"


SELECTED = "#2166ac"  # the clicked line


def _points(box: Sequence[Any]) -> list[tuple[float, float]]:
    """A line box (4 points, or x1 y1 x2 y2) as polygon points."""
    if isinstance(box[0], (list, tuple)):
        return [(float(x), float(y)) for x, y in box]
    x1, y1, x2, y2 = (float(v) for v in box)
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


def annotate(image: Any, lines: Sequence[dict[str, Any]], selected: int | None = None) -> Any:
    """A copy of ``image`` with each line's box drawn in its confidence colour, line ``selected`` in blue."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 400))
    for i, line in enumerate(lines):
        if line.get("box"):
            chosen = i == selected
            colour = SELECTED if chosen else confidence_colour(line.get("confidence"))
            draw.polygon(_points(line["box"]), outline=colour, width=2 * width if chosen else width)
    return out


def line_at(lines: Sequence[dict[str, Any]], x: float, y: float) -> int | None:
    """The line whose box holds the point (the smallest when boxes overlap), else the nearest one within a
    line height of it; None when no line is that close."""
    best, best_key = None, (float("inf"), float("inf"))
    for i, line in enumerate(lines):
        xs, ys = zip(*_points(line["box"]), strict=True)
        dist = math.hypot(max(min(xs) - x, 0, x - max(xs)), max(min(ys) - y, 0, y - max(ys)))
        key = (dist, (max(xs) - min(xs)) * (max(ys) - min(ys)))
        if dist <= max(ys) - min(ys) and key < best_key:
            best, best_key = i, key
    return best


def line_html(
    index: int | None, readings: Sequence[Reading], side: int, pairs: Sequence[tuple[int | None, int | None]]
) -> str:
    """What a click on line ``index`` of ``readings[side]`` shows: its text and confidence and, with two
    models, the line ``pairs`` matches with it in the other reading, the differences marked."""
    if index is None:
        return "<p>No line there: click inside a box.</p>"
    lines = [
        r.lines[k] if k is not None else None
        for r, k in zip(readings, picked(pairs, side, index), strict=False)
    ]
    texts = [line["text"] if line else "" for line in lines]
    cells = marked(*texts) if len(readings) == 2 else [html.escape(texts[0])]
    rows = "".join(
        f"<tr><th>{name}: {html.escape(r.info.get('model', ''))}</th><td>{_confidence(line)}</td>"
        f"<td>{cell if line else '<i>(no matching line)</i>'}</td></tr>"
        for name, r, line, cell in zip("AB", readings, lines, cells, strict=False)
    )
    return f"{STYLE}<p class=ds-sum>Line {index + 1} of {'AB'[side]}</p><table class=ds-cmp>{rows}</table>"


def _confidence(line: dict[str, Any] | None) -> str:
    conf = (line or {}).get("confidence")
    return "" if conf is None else f"<span style='color:{confidence_colour(conf)}'>{conf:.2f}</span>"


def timings_text(info: dict[str, Any]) -> str:
    """The timings as one sentence (Markdown)."""
    if not info or "error" in info:
        return ""
    pages = f"{info['pages']} page{'s' if info['pages'] != 1 else ''}"
    took = " · ".join(f"{name} {_duration(info[key])}" for name, key in
                      [("decode", "decode_ms"), ("model load", "model_load_ms"), ("model", "model_ms"), ("total", "total_ms")])  # fmt: skip
    return f"**{info['model']}** · {pages} · {took}"


def _duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def example_files(limit: int = 3) -> list[str]:
    """Line images shipped with DeepSynth (examples/), offered under the upload box."""
    root = Path(__file__).resolve().parents[3] / "examples"
    return [str(p) for p in sorted(root.glob("*/images/**/*.png"))[:limit]]


def picked(
    pairs: Sequence[tuple[int | None, int | None]], side: int, index: int | None
) -> tuple[int | None, ...]:
    """(line of A, line of B) after a click on line ``index`` of reading ``side``: that line and the one
    ``pairs`` matches with it (None when unpaired, or with one reading)."""
    other = next((pair[1 - side] for pair in pairs if index is not None and pair[side] == index), None)
    return (index, other) if side == 0 else (other, index)


NO_MODEL = "(none)"


def _side(gr: Any, name: str, suffix: str, *, visible: bool) -> tuple[Any, ...]:
    """One model's column: the page with its clickable line boxes, the timings, the text."""
    with gr.Column(visible=visible) as column:
        preview = gr.Image(label=f"Lines found by {name}", show_label=False, type="pil", interactive=False,
                           format="png", elem_id=f"preview{suffix}")  # fmt: skip
        timings = gr.Markdown(elem_id=f"timings{suffix}")
        text = gr.Textbox(label=f"Text ({name})", lines=8, elem_id=f"text{suffix}")
    return text, timings, preview, column


def build_demo(
    specs: Sequence[str],
    *,
    compare: str | None = None,
    pdf_dpi: float = 150.0,
    factory: Callable[[str], OCRService] | None = None,
) -> Any:
    """The Gradio Blocks app (call ``.launch()`` on it); ``compare`` is the model preselected as B."""
    import gradio as gr

    specs = list(dict.fromkeys([*specs, *([compare] if compare else [])]))
    backend = DemoBackend(specs, limits=ServingLimits(pdf_dpi=pdf_dpi), factory=factory)

    def on_run(file_path: str | None, spec_a: str, spec_b: str) -> tuple[Any, ...]:
        a = backend.run(file_path, spec_a)
        b = backend.run(file_path, spec_b) if spec_b != NO_MODEL else None
        both = b is not None and a.page is not None and b.page is not None
        pairs = pair_lines([ln["text"] for ln in a.lines], [ln["text"] for ln in b.lines]) if both else []
        diff = comparison_html(spec_a, a.text, spec_b, b.text) if both else ""
        state = ([a, b] if b is not None else [a], pairs)
        return (a.text, timings_text(a.info), a.preview(), b.text if b else "", timings_text(b.info) if b else "",
                b.preview() if b else None, gr.Column(visible=b is not None), diff, "", state)  # fmt: skip

    def on_select(side: int) -> Callable[..., tuple[Any, ...]]:
        def handler(state: Any, evt: gr.SelectData) -> tuple[Any, ...]:
            readings, pairs = state
            index = line_at(readings[side].lines, *evt.index)
            previews = [r.preview(k) for r, k in zip(readings, picked(pairs, side, index), strict=False)] + [
                gr.skip()
            ]
            return line_html(index, readings, side, pairs), *previews[:2]

        handler.__annotations__["evt"] = gr.SelectData  # gradio passes the click to the argument of this type
        return handler

    with gr.Blocks(title="DeepSynth OCR") as demo:
        gr.Markdown(
            "# DeepSynth OCR\nUpload an image or a PDF and press **Run OCR**. Pick a second model (B) to compare "
            "the two side by side."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image or PDF", file_types=["image", ".pdf", ".tif", ".tiff"],
                                 type="filepath", elem_id="upload")  # fmt: skip
                if examples := example_files():
                    gr.Examples(examples=examples, inputs=[upload], label="Examples (shipped Fraktur lines)")
            with gr.Column():
                model_a = gr.Dropdown(choices=specs, value=specs[0], label="Model A", elem_id="model")
                model_b = gr.Dropdown(choices=[NO_MODEL, *specs], value=compare or NO_MODEL,
                                      label="Model B (compare with A)", elem_id="model_b")  # fmt: skip
                run = gr.Button("Run OCR", variant="primary", elem_id="run")
        gr.Markdown(
            "Click a line on a page to read it. Boxes: <span style='color:#1a9850'>■</span> confidence ≥ 0.9, "
            "<span style='color:#f28e2b'>■</span> ≥ 0.7, <span style='color:#d73027'>■</span> below, "
            f"<span style='color:{SELECTED}'>■</span> the line you clicked."
        )
        with gr.Row():
            text_a, timings_a, preview_a, _ = _side(gr, "A", "", visible=True)
            text_b, timings_b, preview_b, column_b = _side(gr, "B", "_b", visible=bool(compare))
        line = gr.HTML(elem_id="line")
        diff = gr.HTML(elem_id="diff")
        state = gr.State()
        run.click(on_run, inputs=[upload, model_a, model_b], outputs=[text_a, timings_a, preview_a, text_b,
                  timings_b, preview_b, column_b, diff, line, state])  # fmt: skip
        preview_a.select(on_select(0), inputs=[state], outputs=[line, preview_a, preview_b])
        preview_b.select(on_select(1), inputs=[state], outputs=[line, preview_a, preview_b])
    demo.backend = backend  # type: ignore[attr-defined]
    return demo
