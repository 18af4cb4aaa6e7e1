"""Gradio demo: the backend and the comparison on their own, and real clicks in headless Chromium comparing two
real engines (RapidOCR and Tesseract) on a page of real print and Fraktur lines."""

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
    r = backend.run(str(tmp_path / "a.png"), "colour")
    assert r.preview().size == (64, 32)  # no line boxes from this engine: one line, the whole page
    assert r.lines == [{"text": "#010203", "confidence": 1.0, "box": [0, 0, 64, 32]}]
    assert r.text == "#010203" and r.info["pages"] == 1 and r.info["total_ms"] >= r.info["model_ms"]
    doc = pdfium.PdfDocument.new()
    doc.new_page(72, 36)
    doc.new_page(72, 36)
    doc.save(str(tmp_path / "d.pdf"))
    r = backend.run(str(tmp_path / "d.pdf"), "colour")
    assert r.info["pages"] == 2 and "--- page 2 ---\n#ffffff" in r.text
    (tmp_path / "bad.png").write_bytes(b"nope")
    r = backend.run(str(tmp_path / "bad.png"), "colour")
    assert r.preview() is None
    assert r.text.startswith("Cannot read this file") and "bad.png" in r.text
    assert r.info == {"error": "invalid_image"}
    assert backend.run(None, "colour").text == "Upload an image or a PDF first."
    assert backend.run(str(tmp_path / "a.png"), "nosuch").text == "Unknown model 'nosuch'."
    from deepsynth.inference.web_demo import timings_text

    info = {
        "model": "m",
        "pages": 2,
        "decode_ms": 4.2,
        "model_load_ms": 21614,
        "model_ms": 9999,
        "total_ms": 31617,
    }
    assert (
        timings_text(info)
        == "**m** · 2 pages · decode 4 ms · model load 21.6 s · model 9999 ms · total 31.6 s"
    )
    assert timings_text(r.info) == ""  # an error says so in the text box


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
    assert annotate(page, [{"box": [10, 10, 50, 30], "confidence": 0.1}], 0).getpixel((10, 20)) == (
        33,
        102,
        172,
    )
    assert example_files() and all(Path(f).is_file() for f in example_files())


def test_comparison_pairs_lines_and_marks_exactly_the_differences():
    from deepsynth.inference.compare import comparison_html, marked, pair_lines

    # a line only B found stands alone; changed lines pair one to one
    assert pair_lines(["a", "b", "c"], ["a", "x", "b", "d"]) == [(0, 0), (None, 1), (1, 2), (2, 3)]
    assert pair_lines(["a"], []) == [(0, None)]
    assert marked("Ceci est mon Festament", "Ceci est mon testament") == (
        "Ceci est mon <del>F</del>estament",
        "Ceci est mon <ins>t</ins>estament",
    )
    assert marked("a<b", "a<b") == ("a&lt;b", "a&lt;b")  # text is escaped, never HTML
    page = comparison_html("shipped", "same line\nJe icogue\nonly A", "tuned", "same line\nJe revoque")
    assert "B reads 2 of 3 lines differently from A (10 character edits)" in page
    assert "<tr class=same><td class=n>1</td><td>same line</td><td>same line</td></tr>" in page
    assert "<td>Je <del>ic</del>o<del>g</del>ue</td><td>Je <ins>rev</ins>o<ins>q</ins>ue</td>" in page
    assert "<td><del>only A</del></td><td></td>" in page
    assert "read all 1 line the same" in comparison_html("a", "x", "b", "x")


def test_compare_adds_model_b_and_preselects_it():
    demo = build_demo(["colour"], compare="rapidocr", factory=factory)
    assert demo.backend.specs == ["colour", "rapidocr"]
    picker = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model_b")
    assert picker.value == "rapidocr" and [c[0] for c in picker.choices] == ["(none)", "colour", "rapidocr"]
    one = build_demo(["colour"], factory=factory)
    assert next(b for b in one.blocks.values() if getattr(b, "elem_id", None) == "model_b").value == "(none)"


def test_a_click_finds_its_line_and_the_paired_line_of_the_other_model():
    from deepsynth.inference.web_demo import Reading, line_at, line_html, picked

    quad = [[10, 10], [90, 10], [90, 30], [10, 30]]
    lines = [{"text": "top", "confidence": 0.95, "box": quad}, {"text": "Je icogue", "confidence": 0.6,
             "box": [10, 40, 90, 60]}]  # fmt: skip
    assert [line_at(lines, 50, 20), line_at(lines, 50, 50), line_at(lines, 50, 35)] == [0, 1, 0]
    assert line_at(lines, 50, 200) is None  # far from every line
    a = Reading("top\nJe icogue", {"model": "shipped"}, None, lines)
    b = Reading(
        "Je revoque", {"model": "tuned"}, None, [{"text": "Je revoque", "confidence": 0.9, "box": quad}]
    )
    pairs = [(0, None), (1, 0)]
    assert (
        picked(pairs, 0, 1) == (1, 0) and picked(pairs, 1, 0) == (1, 0) and picked(pairs, 0, 0) == (0, None)
    )
    shown = line_html(1, [a, b], 0, pairs)
    assert (
        "Line 2 of A" in shown
        and "Je <del>ic</del>o<del>g</del>ue" in shown
        and "Je <ins>rev</ins>o" in shown
    )
    assert "0.60" in shown and "0.90" in shown and "A: shipped" in shown and "B: tuned" in shown
    assert "(no matching line)" in line_html(0, [a, b], 0, pairs)
    alone = line_html(1, [a], 0, [])
    assert "Je icogue" in alone and "<del>" not in alone and "B:" not in alone
    assert "No line there" in line_html(None, [a, b], 0, pairs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _page_of_lines(shared_data: Path, path: Path) -> tuple[list[str], list[int]]:
    """Two real printed lines and two real Fraktur lines stacked into one page; their texts and centres."""
    import json

    from PIL import Image

    src = shared_data / "gt4histocr_dta19_lines"
    rows = [json.loads(x) for x in (src / "manifest.jsonl").read_text().splitlines()[:2]]
    crops = fondue_lines(shared_data, 2) + [
        (Image.open(src / r["image"]).convert("RGB"), r["text"]) for r in rows
    ]
    crops = [(im.resize((round(im.width * 40 / im.height), 40)), text) for im, text in crops]
    page = Image.new("RGB", (max(im.width for im, _ in crops) + 40, 56 * len(crops) + 8), "white")
    for k, (im, _) in enumerate(crops):
        page.paste(im, (20, 12 + 56 * k))
    page.save(path)
    return [text for _, text in crops], [32 + 56 * k for k in range(len(crops))]


def _blue_pixels(png: bytes) -> int:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(1 for r, g, b in img.getdata() if abs(r - 33) + abs(g - 102) + abs(b - 172) < 60)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")
def test_two_real_engines_side_by_side_in_headless_chromium(shared_data, tmp_path: Path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    truths, centres = _page_of_lines(shared_data, tmp_path / "page.png")
    demo = build_demo(["rapidocr:page", "tesseract:page"])  # B is picked on the page, as a user would
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # Gradio is a single-page app: wait until it has mounted (network idle, the button drawn), or a
            # file chosen before its upload handler is attached is silently ignored on a busy machine
            local = f"http://127.0.0.1:{port}/"
            # offline machine: a request for an outside asset (fonts, CDNs) would hang and never let the
            # network go idle, so everything that is not the demo itself is refused at once
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(local) else r.abort())
            page.goto(local, wait_until="load", timeout=180_000)  # Gradio keeps a stream open: never idle
            page.locator("#run").wait_for(timeout=60_000)
            page.wait_for_timeout(3000)  # let the app attach its upload handlers after it is drawn
            page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "page.png"))
            page.get_by_text("page.png").first.wait_for(timeout=30_000)
            assert not page.locator("#preview_b").is_visible()  # one model until B is picked
            page.locator("#model_b input").click()
            page.get_by_role("option", name="tesseract:page").click()
            expect(page.locator("#model_b input")).to_have_value("tesseract:page")
            page.locator("#run").click()
            page.locator("#diff table").wait_for(timeout=300_000)
            expect(page.locator("#text_b textarea")).not_to_have_value("", timeout=30_000)
            text_a, text_b = (page.locator(f"{t} textarea").input_value() for t in ("#text", "#text_b"))
            timings = page.locator("#timings").inner_text()
            cells = [[c.inner_html() for c in row.locator("td").all()[1:]] for row in
                     page.locator("#diff tr").all()[1:]]  # fmt: skip
            summary = page.locator("#diff .ds-sum").inner_text()
            page.screenshot(path=str(tmp_path / "compared.png"), full_page=True)
            # click the third line (the first Fraktur line) on A's page
            img = page.locator("#preview img")
            box, natural = img.bounding_box(), img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
            scale = box["width"] / natural[0]
            before = _blue_pixels(img.screenshot())
            img.click(position={"x": 200 * scale, "y": centres[2] * scale})
            expect(page.locator("#line")).to_contain_text("Line 3 of A", timeout=60_000)
            line = page.locator("#line").inner_html()
            page.wait_for_timeout(500)  # the redrawn previews
            after_a, after_b = (
                _blue_pixels(page.locator(f"{p} img").screenshot()) for p in ("#preview", "#preview_b")
            )
            page.screenshot(path=str(tmp_path / "clicked.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    import html
    import re

    from deepsynth.evaluation.metrics import cer

    lines_a, lines_b = text_a.splitlines(), text_b.splitlines()
    assert len(lines_a) == len(lines_b) == len(cells) == 4
    assert cer(truths[:2], lines_a[:2]) < 0.05 and cer(truths[:2], lines_b[:2]) < 0.05  # both read print
    plain = lambda cell: html.unescape(re.sub(r"<[^>]+>", "", cell))  # noqa: E731
    kept = lambda cell, tag: html.unescape(re.sub(rf"<{tag}>.*?</{tag}>|<[^>]+>", "", cell))  # noqa: E731
    differing = 0
    for (cell_a, cell_b), la, lb in zip(cells, lines_a, lines_b, strict=True):
        assert (plain(cell_a), plain(cell_b)) == (la, lb)  # each row shows the two readings of one line
        marks = "<del>" in cell_a or "<ins>" in cell_b
        assert marks == (la != lb)  # marks exactly where the engines differ...
        assert kept(cell_a, "del") == kept(cell_b, "ins")  # ...and only on the characters that differ
        differing += marks
    assert differing >= 1 and f"B reads {differing} of 4 lines differently" in summary  # Fraktur: they differ
    assert "rapidocr" in timings and " ms" in timings and "{" not in timings
    assert "A: rapidocr:page" in line and "B: tesseract:page" in line
    assert plain(line).count(lines_a[2]) >= 1 and lines_b[2] in plain(line).replace("\n", "")
    assert before == 0 and after_a > 0 and after_b > 0  # the clicked line and its pair drawn in blue
