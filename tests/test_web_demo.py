"""Gradio demo: the backend on its own, and a real click in headless Chromium with the real RapidOCR model."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from deepsynth.inference.service import OCRService
from deepsynth.inference.web_demo import DemoBackend, build_demo
from deepsynth.observability import Observability
from tests.serving_engines import ColourEngine, colour_image, fondue_lines

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def factory(spec: str) -> OCRService:
    if spec == "colour":
        return OCRService(ColourEngine(), obs=Observability("colour", metrics=False))
    return OCRService(spec, obs=Observability(spec, metrics=False))


def test_backend_reads_images_and_pdfs_and_reports_bad_files(tmp_path: Path):
    import pypdfium2 as pdfium

    backend = DemoBackend(["colour"], factory=factory)
    colour_image((1, 2, 3)).save(tmp_path / "a.png")
    text, info, preview = backend.run(str(tmp_path / "a.png"), "colour")
    assert preview.size == (64, 32)  # no lines from this engine: the page itself
    assert text == "#010203" and info["pages"] == 1 and info["total_ms"] >= info["model_ms"]
    doc = pdfium.PdfDocument.new()
    doc.new_page(72, 36)
    doc.new_page(72, 36)
    doc.save(str(tmp_path / "d.pdf"))
    text, info, _ = backend.run(str(tmp_path / "d.pdf"), "colour")
    assert info["pages"] == 2 and "--- page 2 ---\n#ffffff" in text
    (tmp_path / "bad.png").write_bytes(b"nope")
    text, info, preview = backend.run(str(tmp_path / "bad.png"), "colour")
    assert preview is None
    assert (
        text.startswith("Cannot read this file") and "bad.png" in text and info == {"error": "invalid_image"}
    )
    assert backend.run(None, "colour")[0] == "Upload an image or a PDF first."


def test_preview_draws_real_line_boxes_in_confidence_colours(shared_data):
    import json

    from deepsynth.inference.web_demo import annotate, confidence_colour, example_files

    src = shared_data / "fondue_en_print20"
    row = next(json.loads(x) for x in (src / "manifest.jsonl").read_text().splitlines() if '"page"' in x)
    from PIL import Image

    page = Image.open(src / row["image"]).convert("RGB")
    (pred,) = OCRService("rapidocr:page", obs=Observability("p", metrics=False)).recognize([page])
    assert len(pred.lines) > 5
    drawn = annotate(page, pred.lines)
    colours = {confidence_colour(ln["confidence"]) for ln in pred.lines}
    rgb = {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in colours}
    assert drawn.size == page.size and rgb & set(drawn.getdata()) == rgb  # every colour used is on the image
    assert not rgb & set(page.getdata())
    assert (
        confidence_colour(0.95) != confidence_colour(0.8) != confidence_colour(0.1) != confidence_colour(None)
    )
    assert annotate(page, [{"box": [10, 10, 50, 30], "confidence": 0.1}]).getpixel((10, 20)) == (215, 48, 39)
    assert example_files() and all(Path(f).is_file() for f in example_files())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")
def test_real_click_in_headless_chromium_reads_a_real_line(shared_data, tmp_path: Path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    ((img, truth),) = fondue_lines(shared_data, 1)
    line = tmp_path / "line.png"
    img.save(line)
    demo = build_demo(["rapidocr", "colour"], factory=factory)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            # Gradio is a single-page app: wait until it has mounted (network idle, the button drawn), or a
            # file chosen before its upload handler is attached is silently ignored on a busy machine
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("#run").wait_for(timeout=30_000)
            page.locator("#upload input[type=file]").set_input_files(str(line))
            page.get_by_text("line.png").first.wait_for(timeout=30_000)
            page.locator("#run").click()
            out = page.locator("#text textarea")
            expect(out).not_to_have_value("", timeout=60_000)
            got = out.input_value()
            page.locator("#preview img").wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            timings = page.locator("#timings").inner_text()
            browser.close()
    finally:
        demo.close()
    from deepsynth.evaluation.metrics import cer

    assert cer([truth], [got]) < 0.05, (truth, got)
    assert "rapidocr" in timings and "model" in timings and " ms" in timings and "{" not in timings
    assert (tmp_path / "demo.png").stat().st_size > 0
