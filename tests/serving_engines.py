"""Small real OCR engines for serving tests (deterministic, instant) — the real models are tested too."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Sequence

from PIL import Image

from deepsynth.models.base import Prediction
from deepsynth.models.generation import GenerationConfig


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def data_uri(img: Image.Image) -> str:
    """A PNG data URI (what /v1/ocr JSON bodies and OpenAI-style image_url parts carry)."""
    return "data:image/png;base64," + base64.b64encode(png(img)).decode()


def pdf_bytes(n_pages: int, size: tuple[float, float] = (200, 100)) -> bytes:
    """A PDF of ``n_pages`` blank pages of ``size`` points."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    for _ in range(n_pages):
        doc.new_page(*size)
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def colour_image(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 32)) -> Image.Image:
    return Image.new("RGB", size, rgb)


class ColourEngine:
    """Reads a solid-colour image as the hex of its mean colour; remembers every batch size it saw.

    An image whose top-left pixel is pure red (255, 0, 1) makes it raise, to test failure isolation.
    """

    name = "colour"

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.delay = delay
        self.gate = gate  # when given, every call waits until it is set (to hold the model "busy")
        self.batch_sizes: list[int] = []
        self.generations: list[GenerationConfig | None] = []
        self._lock = threading.Lock()

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        with self._lock:
            self.batch_sizes.append(len(images))
            self.generations.append(generation)
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        out = []
        for img in images:
            px = img.convert("RGB").getpixel((0, 0))
            if px == (255, 0, 1):
                raise ValueError("poison pixel")
            r, g, b = (round(sum(c) / len(c)) for c in zip(*img.convert("RGB").getdata(), strict=True))
            out.append(Prediction(text=f"#{r:02x}{g:02x}{b:02x}", confidence=1.0, finished=True))
        return out


class LoopingEngine:
    """A 'generative' engine that loops and stops at the length limit under greedy decoding and finishes
    cleanly when sampling (like a model rescued by olmOCR-style retries)."""

    name = "looping"

    def __init__(self) -> None:
        self.calls: list[GenerationConfig | None] = []

    def recognize(
        self, images: Sequence[Image.Image], generation: GenerationConfig | None = None
    ) -> list[Prediction]:
        self.calls.append(generation)
        if generation is not None and generation.do_sample:
            return [Prediction(text="Total due: 42 EUR", finished=True, num_tokens=5) for _ in images]
        return [
            Prediction(text="Total due: " + "42 EUR " * 40, finished=False, num_tokens=81) for _ in images
        ]


@contextlib.contextmanager
def running_server(app, *, ready: bool = True, timeout_s: float = 60.0, graceful_s: float | None = None):
    """Run a FastAPI app under a real uvicorn server on a free loopback port (in a thread); yields its URL.

    ``graceful_s``: uvicorn's graceful-shutdown window (requests still running then are cancelled)."""
    import socket

    import httpx
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=graceful_s,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        while ready and httpx.get(f"{url}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.05)
        server.url = url  # type: ignore[attr-defined]
        yield server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def build_colour(arg: str | None = None, **kwargs) -> ColourEngine:
    """Registry-style factory for ColourEngine (tests register it under a test-only name)."""
    return ColourEngine(delay=float(arg) if arg else 0.0)


def fondue_lines(shared_data, n: int) -> list[tuple[Image.Image, str]]:
    """The first n real printed line crops of fondue_en_print20 with their transcriptions."""
    import json

    root = shared_data / "fondue_en_print20"
    out = []
    with (root / "manifest.jsonl").open() as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["level"] == "line" and len(rec["text"]) > 20:
                out.append((Image.open(root / rec["image"]).convert("RGB"), rec["text"]))
                if len(out) == n:
                    break
    return out
