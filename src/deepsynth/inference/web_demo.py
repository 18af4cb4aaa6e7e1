"""Gradio web demo (``deepsynth demo-ui``): upload an image or PDF, pick a model, see the text, the first page
with the detected line boxes coloured by confidence (green >= 0.9, orange >= 0.7, red below, grey unknown),
and the timings as a sentence; shipped line images are offered as examples.

Models are loaded on first use and kept; every request goes through the same :class:`OCRService` guard and
the same input decoding (limits, PDF rendering) as the HTTP API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deepsynth.inference.inputs import InputError, decode_file
from deepsynth.inference.limits import ServingLimits
from deepsynth.inference.service import ModelLoadError, OCRService


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

    def run(self, file_path: str | None, spec: str) -> tuple[str, dict[str, Any], Any]:
        """(text, timings/info, first page with line boxes or None) for one uploaded file; errors come back as
        readable text, never a crash."""
        if not file_path:
            return "Upload an image or a PDF first.", {}, None
        if spec not in self.specs:
            return f"Unknown model {spec!r}.", {}, None
        t0 = time.perf_counter()
        path = Path(file_path)
        try:
            pages = decode_file(path.read_bytes(), path.name, None, self.limits)
        except InputError as exc:
            return f"Cannot read this file: {exc}", {"error": exc.kind}, None
        t_decode = time.perf_counter()
        try:
            svc = self.service(spec)
        except ModelLoadError as exc:
            return f"Cannot load model: {exc}", {"error": "model_load"}, None
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
        return text, info, annotate(pages[0].image, preds[0].lines or [])


def confidence_colour(confidence: float | None) -> str:
    """Box colour of a line: green >= 0.9, orange >= 0.7, red below, grey when the engine gives none."""
    if confidence is None:
        return "#888888"
    return "#1a9850" if confidence >= 0.9 else "#f28e2b" if confidence >= 0.7 else "#d73027"


def annotate(image: Any, lines: Sequence[dict[str, Any]]) -> Any:
    """A copy of ``image`` with each line's box (4 points, or x1 y1 x2 y2) drawn in its confidence colour."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 400))
    for line in lines:
        box = line.get("box")
        if not box:
            continue
        if isinstance(box[0], (list, tuple)):
            points = [(float(x), float(y)) for x, y in box]
        else:
            x1, y1, x2, y2 = (float(v) for v in box)
            points = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
        draw.polygon(points, outline=confidence_colour(line.get("confidence")), width=width)
    return out


def timings_text(info: dict[str, Any]) -> str:
    """The timings as one sentence (Markdown)."""
    if not info or "error" in info:
        return ""
    pages = f"{info['pages']} page{'s' if info['pages'] != 1 else ''}"
    return (f"**{info['model']}** · {pages} · decode {info['decode_ms']:.0f} ms · model load "
            f"{info['model_load_ms']:.0f} ms · model {info['model_ms']:.0f} ms · total {info['total_ms']:.0f} ms")  # fmt: skip


def example_files(limit: int = 3) -> list[str]:
    """Line images shipped with DeepSynth (examples/), offered under the upload box."""
    root = Path(__file__).resolve().parents[3] / "examples"
    return [str(p) for p in sorted(root.glob("*/images/**/*.png"))[:limit]]


def build_demo(
    specs: Sequence[str],
    *,
    pdf_dpi: float = 150.0,
    factory: Callable[[str], OCRService] | None = None,
) -> Any:
    """The Gradio Blocks app (call ``.launch()`` on it)."""
    import gradio as gr

    backend = DemoBackend(specs, limits=ServingLimits(pdf_dpi=pdf_dpi), factory=factory)

    def on_run(file_path: str | None, spec: str) -> tuple[str, str, Any]:
        text, info, preview = backend.run(file_path, spec)
        return text, timings_text(info), preview

    with gr.Blocks(title="DeepSynth OCR") as demo:
        gr.Markdown("# DeepSynth OCR\nUpload an image or a PDF, pick a model, press **Run OCR**.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(
                    label="Image or PDF",
                    file_types=["image", ".pdf", ".tif", ".tiff"],
                    type="filepath",
                    elem_id="upload",
                )
                model = gr.Dropdown(choices=list(specs), value=specs[0], label="Model", elem_id="model")
                run = gr.Button("Run OCR", variant="primary", elem_id="run")
                if examples := example_files():
                    gr.Examples(examples=examples, inputs=[upload], label="Examples (shipped Fraktur lines)")
            with gr.Column():
                text = gr.Textbox(label="Text", lines=14, elem_id="text")
                timings = gr.Markdown(elem_id="timings")
        preview = gr.Image(label="Lines found (green: confident, orange: unsure, red: doubtful)", type="pil",
                           interactive=False, elem_id="preview")  # fmt: skip
        run.click(on_run, inputs=[upload, model], outputs=[text, timings, preview])
    demo.backend = backend  # type: ignore[attr-defined]
    return demo
