"""Page reading: shipped detector + line recogniser, reading order (columns), page CER on a real page."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw, ImageFont
from rapidfuzz.distance import Levenshtein

from deepsynth.models.ppocr.pages import Box, PageReader, join_lines, reading_order


def boxes(*coords: tuple[float, float, float, float]) -> list[Box]:
    return [Box(i, *c) for i, c in enumerate(coords)]


def order_of(bs: list[Box], gutter: float = 15) -> list[int]:
    return [b.index for b in reading_order(bs, gutter)]


def test_two_columns_under_a_full_width_title_read_column_by_column():
    bs = boxes(
        (0, 0, 400, 20),  # 0 title across both columns
        (0, 40, 180, 60),  # 1 left column, lines aligned with the right column
        (220, 40, 400, 60),  # 2
        (0, 70, 180, 90),  # 3
        (220, 70, 400, 90),  # 4
        (0, 100, 120, 120),  # 5 short last line of the left column (no right neighbour)
        (220, 100, 400, 120),  # 6
        (0, 150, 400, 170),  # 7 full-width footer
    )
    assert order_of(bs) == [0, 1, 3, 5, 2, 4, 6, 7]


def test_single_column_rows_and_split_lines_read_left_to_right():
    bs = boxes((10, 52, 100, 70), (0, 0, 300, 20), (120, 50, 300, 71), (0, 25, 290, 45))
    assert order_of(bs, gutter=40) == [1, 3, 0, 2]  # a line split in two stays one row, left part first
    lines = [
        {"text": t, "bbox": [b.x0, b.y0, b.x1, b.y1]}
        for t, b in zip("abcd", reading_order(bs, 40), strict=True)
    ]
    assert join_lines(lines) == "a\nb\nc d"


def _two_column_page() -> tuple[Image.Image, list[str]]:
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 26)
    left = ["The first column", "goes on here and", "ends on this line."]
    right = ["Second column text", "continues down", "to the very end."]
    page = Image.new("RGB", (900, 330), "white")
    draw = ImageDraw.Draw(page)
    draw.text((40, 20), "A Title Over Both Columns", fill="black", font=font)
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        draw.text((40, 100 + 60 * i), a, fill="black", font=font)
        draw.text((480, 100 + 60 * i), b, fill="black", font=font)
    return page, ["A Title Over Both Columns", *left, *right]


def test_page_reader_reads_synthetic_two_column_page_in_order():
    page, expected = _two_column_page()
    reader = PageReader()
    pred = reader.read(page)
    texts = [line["text"] for line in pred.lines]
    assert len(texts) == len(expected)
    assert Levenshtein.distance("\n".join(expected), "\n".join(texts)) <= 3
    assert pred.text == "\n".join(texts)
    assert all(line["bbox"][0] < line["bbox"][2] and 0 < line["confidence"] <= 1 for line in pred.lines)
    assert reader.recognize([page])[0].text == pred.text
    assert reader.read(Image.new("RGB", (200, 100), "white")).lines == []


def test_any_engine_reads_the_detected_lines_tesseract_too():
    page, expected = _two_column_page()
    from deepsynth.models.registry import load_engine

    (pred,) = load_engine("ppocr-page:tesseract").recognize([page])  # was: numpy crops crashed Tesseract
    texts = [line["text"] for line in pred.lines]
    assert len(texts) == len(expected) and Levenshtein.distance("\n".join(expected), "\n".join(texts)) <= 6


def test_registry_builds_page_readers_over_any_recogniser(tmp_path):
    from deepsynth.models.ppocr.adapter import PPOCRAdapter
    from deepsynth.models.ppocr.onnx_engine import PPOCROnnxEngine
    from deepsynth.models.registry import load_engine

    assert isinstance(load_engine("ppocr-page").recognizer, PPOCROnnxEngine)
    tiny = PPOCRAdapter.tiny_random("abc")
    tiny.save(tmp_path / "m")
    reader = load_engine(f"ppocr-page:{tmp_path / 'm'}")  # a saved (fine-tuned) model directory
    assert isinstance(reader, PageReader) and isinstance(reader.recognizer, PPOCRAdapter)
    exported = tiny.export_onnx(tmp_path / "m.onnx")
    assert isinstance(load_engine(f"ppocr-page:{exported}").recognizer, PPOCROnnxEngine)


@pytest.mark.slow
def test_real_two_column_page_cer(shared_data):
    """The two-column UN page of fondue (131 lines): page CER after the reading order; measured ~2.1%."""
    root = shared_data / "fondue_en_print20"
    rows = [json.loads(line) for line in (root / "manifest.jsonl").open(encoding="utf-8")]
    row = next(r for r in rows if r["id"] == "A_RES_44_192-EN_2")
    pred = PageReader().read(Image.open(root / row["image"]))
    cer = Levenshtein.distance(row["text"], pred.text) / len(row["text"])
    print(f"page CER {cer:.4f}, {len(pred.lines)} lines (ground truth {row['n_lines']})")
    assert abs(len(pred.lines) - row["n_lines"]) <= 5
    assert cer < 0.05
