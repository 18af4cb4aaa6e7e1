"""Gradio web demo (``deepsynth demo-ui``): upload an image or PDF, pick a model, see the text and timings.

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

    def run(self, file_path: str | None, spec: str) -> tuple[str, dict[str, Any]]:
        """(text, timings/info) for one uploaded file; errors come back as readable text, never a crash."""
        if not file_path:
            return "Upload an image or a PDF first.", {}
        if spec not in self.specs:
            return f"Unknown model {spec!r}.", {}
        t0 = time.perf_counter()
        path = Path(file_path)
        try:
            pages = decode_file(path.read_bytes(), path.name, None, self.limits)
        except InputError as exc:
            return f"Cannot read this file: {exc}", {"error": exc.kind}
        t_decode = time.perf_counter()
        try:
            svc = self.service(spec)
        except ModelLoadError as exc:
            return f"Cannot load model: {exc}", {"error": "model_load"}
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
        return text, info


def build_demo(
    specs: Sequence[str],
    *,
    pdf_dpi: float = 150.0,
    factory: Callable[[str], OCRService] | None = None,
) -> Any:
    """The Gradio Blocks app (call ``.launch()`` on it)."""
    import gradio as gr

    backend = DemoBackend(specs, limits=ServingLimits(pdf_dpi=pdf_dpi), factory=factory)

    def on_run(file_path: str | None, spec: str) -> tuple[str, dict[str, Any]]:
        return backend.run(file_path, spec)

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
            with gr.Column():
                text = gr.Textbox(label="Text", lines=14, elem_id="text")
                timings = gr.JSON(label="Timings", elem_id="timings")
        run.click(on_run, inputs=[upload, model], outputs=[text, timings])
    demo.backend = backend  # type: ignore[attr-defined]
    return demo
