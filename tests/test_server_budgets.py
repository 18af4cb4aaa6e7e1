"""Resource budgets on the real HTTP server with the real embedded engines: hostile pages are refused before
the expensive work (decoding, PDF rendering, the model) with a 413 naming the limit, and the server answers
the next good request at once."""

from __future__ import annotations

import time

import httpx
import pytest
from PIL import Image

from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.limits import InputGeometry, ServingLimits, engine_geometry
from deepsynth.inference.service import OCRService
from deepsynth.observability import Observability
from tests.serving_engines import fondue_lines, pdf_bytes, png, running_server

THIN_PNG = png(Image.new("1", (65000, 10), 1))  # the 741-byte line: 312000 px wide at height 48


@pytest.fixture(scope="module", params=["rapidocr", "rapidocr:page"])
def served(request, shared_data):
    service = OCRService(request.param, obs=Observability(request.param, metrics=False))
    ((line, truth),) = fondue_lines(shared_data, 1)
    if request.param == "rapidocr:page":  # a small page: rapidocr would scale a bare line's height to 736
        page = Image.new("RGB", (line.width + 100, 400), "white")
        page.paste(line, (50, 150))
        line = page
    with running_server(create_app(service, ServerSettings(warmup=True)), timeout_s=300) as server:
        yield request.param, server.url, line


def _good_request_is_prompt(url: str, line: Image.Image) -> None:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/ocr", files={"file": ("line.png", png(line), "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["text"].strip()
    assert time.perf_counter() - t0 < 30  # generous for a loaded 2-core box; unbudgeted: minutes


def test_thin_png_is_refused_before_the_model_runs(served):
    spec, url, line = served
    assert len(THIN_PNG) < 1000
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/ocr", files={"file": ("thin.png", THIN_PNG, "image/png")}, timeout=30)
    took = time.perf_counter() - t0
    assert r.status_code == 413, (
        r.text
    )  # before: minutes of model time (rapidocr) / 500 ResizeImgError (page)
    err = r.json()["error"]
    assert err["type"] == "limit_exceeded" and err["param"] == "thin.png"
    assert "65000x10" in err["message"] and "max_aspect_ratio" in err["message"]
    assert took < 10
    _good_request_is_prompt(url, line)


def test_page_engine_refuses_what_its_detector_would_blow_up(served):
    """20000x400 is within the aspect-ratio cap, but rapidocr's page pipeline would feed its detector
    45632x736 px (34 MP); the line recogniser sees only 2400x48."""
    spec, url, line = served
    wide = png(Image.new("L", (20000, 400), 255))
    r = httpx.post(f"{url}/v1/ocr", files={"file": ("wide.png", wide, "image/png")}, timeout=60)
    if spec == "rapidocr:page":
        assert r.status_code == 413, r.text
        assert "45632x736" in r.json()["error"]["message"]
        assert "max_model_pixels" in r.json()["error"]["message"]
    else:
        assert r.status_code == 200, r.text
    _good_request_is_prompt(url, line)


def test_huge_pdf_pages_are_refused_before_rendering(served):
    """Ten blank 14400x14400 pt pages (1.5 KB): each would render at 40 MP even scaled down; the request's
    pixel budget is checked from the page boxes before anything is rendered."""
    import psutil

    spec, url, line = served
    pdf = pdf_bytes(10, (14400, 14400))
    assert len(pdf) < 3000
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/ocr", files={"file": ("huge.pdf", pdf, "application/pdf")}, timeout=60)
    took = time.perf_counter() - t0
    assert r.status_code == 413, r.text  # before: 79 s and ~3.6 GB per process
    assert "max_request_pixels" in r.json()["error"]["message"]
    assert took < 10
    assert psutil.Process().memory_info().rss - rss0 < 100e6  # nothing was rendered
    _good_request_is_prompt(url, line)


def test_one_huge_pdf_page_renders_within_the_pixel_budget(served):
    spec, url, line = served
    pdf = pdf_bytes(1, (14400, 7200))
    r = httpx.post(
        f"{url}/v1/ocr",
        files={"file": ("poster.pdf", pdf, "application/pdf")},
        data={"dpi": "36"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    (page,) = r.json()["pages"]
    assert (page["width"], page["height"]) == (7200, 3600)  # 36 dpi = half a pixel per point
    _good_request_is_prompt(url, line)


def test_limits_are_shown_by_v1_models(served):
    _, url, _ = served
    (model,) = httpx.get(f"{url}/v1/models").json()["data"]
    assert model["limits"] == ServingLimits().as_dict()


def test_geometry_of_each_engine_family(tmp_path):
    assert engine_geometry("rapidocr").kind == "line"
    assert engine_geometry("ppocr:runs/x/best").kind == "line"
    assert engine_geometry("rapidocr:page").kind == engine_geometry("ppocr-page:ppocr").kind == "page"
    assert engine_geometry("deepseek_ocr2:tiny").kind == "native"
    (tmp_path / "deepsynth_model.json").write_text('{"family": "ppocr"}')
    assert engine_geometry(str(tmp_path)).kind == "line"
    line, page = InputGeometry("line"), InputGeometry("page")
    assert line.model_size(65000, 10) == (312000, 48)
    assert line.model_size(100, 48) == (320, 48)  # padded to rapidocr's minimum width
    assert page.model_size(2480, 3508) == (1408, 1984)  # A4 at 300 dpi: long side to 2000
    assert page.model_size(65000, 10) is None  # rapidocr: ResizeImgError


@pytest.mark.parametrize("size", [(2100, 40), (300, 20), (900, 1200), (3000, 2000), (40, 2500)])
def test_page_geometry_matches_rapidocrs_own_resizing(size):
    """The arithmetic of InputGeometry('page') against rapidocr's own functions (on small arrays)."""
    import numpy as np
    from rapidocr.ch_ppocr_det.utils import DetPreProcess
    from rapidocr.utils.process_img import resize_image_within_bounds

    w, h = size
    img, _, _ = resize_image_within_bounds(np.zeros((h, w, 3), np.uint8), 30, 2000)
    det = DetPreProcess(736, "min").resize(img)
    assert InputGeometry("page").model_size(w, h) == (det.shape[1], det.shape[0])


def test_budget_counts_pages_across_files_of_one_request():
    from deepsynth.inference.inputs import InputError, decode_file
    from deepsynth.inference.limits import RequestBudget

    budget = RequestBudget(ServingLimits(max_request_pixels=1_000_000))
    one = png(Image.new("RGB", (800, 800), "white"))
    assert len(decode_file(one, "a.png", budget=budget)) == 1
    with pytest.raises(InputError, match="max_request_pixels") as exc:
        decode_file(one, "b.png", budget=budget)
    assert exc.value.status == 413 and budget.pages == 1
