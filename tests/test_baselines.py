"""Baseline engines (RapidOCR 3.10, Tesseract 5) on rendered and real lines; reading order of page boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from deepsynth.evaluation.metrics import cer
from deepsynth.models.base import OCREngine
from deepsynth.models.baselines.reading_order import boxes_to_lines, reading_order
from deepsynth.models.registry import load_engine

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _render(lines: list[str], *, size: int = 32, width: int = 760, height: int | None = None) -> Image.Image:
    font = ImageFont.truetype(str(FONT), size) if FONT.exists() else ImageFont.load_default(size)
    img = Image.new("RGB", (width, height or 40 + len(lines) * int(size * 1.8)), "white")
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(lines):
        draw.text((20, 20 + i * int(size * 1.8)), text, fill="black", font=font)
    return img


@pytest.fixture(scope="module")
def rapid_page():
    return load_engine("rapidocr:page", threads=1)


def _real_lines(shared_data: Path, name: str, n: int) -> list[dict]:
    rows = [json.loads(x) for x in (shared_data / name / "manifest.jsonl").open(encoding="utf-8")]
    return [r for r in rows if r["level"] == "line"][:n]


def test_reading_order_two_columns_with_header():
    def item(text, x0, y0, x1, y1):
        return {"text": text, "box": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "confidence": 0.9}

    items = [
        item("R2", 600, 160, 1000, 200), item("L1", 0, 100, 500, 140), item("Header", 0, 0, 1000, 50),
        item("R1", 600, 100, 1000, 140), item("L2", 0, 160, 500, 200),
    ]  # fmt: skip
    assert [ln["text"] for ln in reading_order(items)] == ["Header", "L1", "L2", "R1", "R2"]
    # row grouping alone reads across the gutter
    assert [ln["text"] for ln in boxes_to_lines(items)] == ["Header", "L1 R1", "L2 R2"]
    # boxes on one baseline with a small gap join into one line, left to right
    words = [item("world", 120, 10, 220, 40), item("hello", 0, 12, 100, 42)]
    assert [ln["text"] for ln in reading_order(words)] == ["hello world"]
    assert reading_order([]) == []


def test_rapidocr_line_and_page_mode_on_rendered_text(rapid_page):
    engine = load_engine("rapidocr", threads=1)
    assert isinstance(engine, OCREngine) and "line" in engine.name
    img = _render(["The quick brown fox jumps over 13 lazy dogs."])
    pred = engine.recognize([img])[0]
    assert cer("The quick brown fox jumps over 13 lazy dogs.", pred.text) < 0.05
    assert 0 < pred.confidence <= 1 and pred.meta["seconds"] > 0
    # flags are sticky inside RapidOCR: a det call on the shared object must not leak into line mode
    page_img = _render(["First line of text", "Second line here"], width=420, height=300)
    engine._ocr(engine._bgr(page_img), use_det=True, use_cls=False, use_rec=True)
    assert engine.recognize([img])[0].text == pred.text
    page = rapid_page.recognize([page_img])[0]
    assert page.text.splitlines() == ["First line of text", "Second line here"]
    assert len(page.lines) == 2 and len(page.lines[0]["box"]) == 4
    with pytest.raises(ValueError, match="mode must be"):
        load_engine("rapidocr:column")


def test_rapidocr_blank_image_gives_empty_text(rapid_page):
    assert rapid_page.recognize([Image.new("RGB", (200, 150), "white")])[0].text == ""


def test_rapidocr_reads_real_lines(shared_data):
    rows = _real_lines(shared_data, "fondue_en_print20", 4)
    engine = load_engine("rapidocr", threads=1)
    preds = engine.recognize([Image.open(shared_data / "fondue_en_print20" / r["image"]) for r in rows])
    assert cer([r["text"] for r in rows], [p.text for p in preds]) < 0.1


def _tesseract_or_skip(**kw):
    from deepsynth.models.baselines.tesseract_engine import TesseractUnavailable

    try:
        return load_engine("tesseract", **kw)
    except TesseractUnavailable as exc:
        pytest.skip(str(exc))


def test_tesseract_line_mode_reads_rendered_text():
    engine = _tesseract_or_skip()
    assert engine.name.startswith("tesseract-5") and engine.name.endswith("eng+fra+deu[line]")
    pred = engine.recognize([_render(["Grüße aus Köln, où est-ce ?"])])[0]
    assert cer("Grüße aus Köln, où est-ce ?", pred.text) < 0.1
    assert 0 <= pred.confidence <= 1


def test_tesseract_page_mode_lines():
    _tesseract_or_skip()
    engine = load_engine("tesseract:page")
    page = engine.recognize([_render(["First line of text", "Second line here"], width=420, height=300)])[0]
    assert page.text.splitlines() == ["First line of text", "Second line here"]
    assert [len(ln["box"]) for ln in page.lines] == [4, 4]


def test_tesseract_missing_language_or_data_is_a_clear_error(tmp_path):
    from deepsynth.models.baselines.tesseract_engine import TesseractUnavailable

    _tesseract_or_skip()
    with pytest.raises(TesseractUnavailable, match=r"language data \['xx'\].*apt"):
        load_engine("tesseract", lang="eng+xx")
    with pytest.raises(TesseractUnavailable, match="not found"):
        load_engine("tesseract", path=str(tmp_path / "nowhere"))


def test_tesseract_line_options_reach_tesseract():
    engine = _tesseract_or_skip(psm=6, height=64, pad=0.5)
    assert engine._api.GetPageSegMode() == 6
    line = _render(["Grüße aus Köln"])
    framed = engine._prepare(line)
    assert framed.height == 64 + 2 * 32 and framed.getpixel((0, 0)) == (255, 255, 255)
    assert framed.width == round(line.width * 64 / line.height) + 64
    assert cer("Grüße aus Köln", engine.recognize([line])[0].text) < 0.1
    with pytest.raises(ValueError, match="psm"):
        load_engine("tesseract", psm=42)
