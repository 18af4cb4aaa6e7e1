"""The HTTP API on a real uvicorn server (loopback), driven by httpx and the official openai client."""

from __future__ import annotations

import asyncio
import base64
import re
import threading

import httpx
import openai
import pytest
from PIL import Image

from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.limits import ServingLimits
from deepsynth.inference.service import OCRService
from deepsynth.observability import Observability
from tests.serving_engines import ColourEngine, colour_image, data_uri, pdf_bytes, png, running_server


def make_app(engine=None, settings: ServerSettings | None = None, **service_kw):
    engine = engine or ColourEngine()
    service = OCRService(engine, obs=Observability(engine.name), **service_kw)
    return create_app(service, settings or ServerSettings())


@pytest.fixture(scope="module")
def server():
    with running_server(
        make_app(
            ColourEngine(),
            ServerSettings(limits=ServingLimits(max_pages=5)),
            max_batch_size=8,
            max_wait_ms=20,
        )
    ) as s:
        yield s


def test_ocr_multipart_images_with_timings_and_request_id(server):
    files = [
        ("files", ("red.png", png(colour_image((200, 10, 10))), "image/png")),
        ("files", ("blue.png", png(colour_image((0, 0, 250))), "image/png")),
    ]
    r = httpx.post(f"{server.url}/v1/ocr", files=files, headers={"X-Request-ID": "req-42"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-request-id"] == "req-42" and body["id"] == "req-42"
    assert [(p["source"], p["page"], p["text"]) for p in body["pages"]] == [
        ("red.png", 1, "#c80a0a"),
        ("blue.png", 1, "#0000fa"),
    ]
    assert body["model"] == "colour"
    assert {"preprocess_ms", "queue_ms", "model_ms", "postprocess_ms", "total_ms"} <= set(body["timings"])
    assert body["timings"]["total_ms"] >= body["timings"]["model_ms"] >= 0


def test_ocr_json_base64_and_pdf_pages_at_requested_dpi(server):
    raw = base64.b64encode(png(colour_image((1, 2, 3)))).decode()
    pdf = base64.b64encode(pdf_bytes(2)).decode()
    r = httpx.post(
        f"{server.url}/v1/ocr",
        json={"images": [raw, {"name": "doc.pdf", "data": "data:application/pdf;base64," + pdf}], "dpi": 144},
    )
    assert r.status_code == 200, r.text
    pages = r.json()["pages"]
    assert [(p["source"], p["page"], p["text"]) for p in pages] == [
        ("images[0]", 1, "#010203"),
        ("doc.pdf", 1, "#ffffff"),
        ("doc.pdf", 2, "#ffffff"),
    ]
    assert (pages[1]["width"], pages[1]["height"]) == (400, 200)  # 200x100 pt at 144 dpi


def _huge_png() -> bytes:
    return png(Image.new("1", (20000, 20000)))  # 400 MP, a few hundred KB compressed


def _truncated_png() -> bytes:
    data = png(Image.effect_noise((256, 256), 60).convert("RGB"))
    return data[: len(data) // 2]


BAD_FILES = [  # (label, bytes factory, declared content type, status, error type, phrase in message)
    ("zero bytes", lambda: b"", "image/png", 400, "empty_file", "is empty"),
    (
        "corrupt image",
        lambda: b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
        "image/png",
        400,
        "invalid_image",
        "not a readable",
    ),
    ("truncated image", lambda: _truncated_png(), "image/png", 400, "invalid_image", "corrupt"),
    ("huge image", lambda: _huge_png(), "image/png", 413, "image_too_large", "the limit is 40.0 MP"),
    (
        "large image",
        lambda: png(Image.new("1", (9000, 9000))),
        "image/png",
        413,
        "image_too_large",
        "81.0 MP",
    ),
    (
        "pdf without pages",
        lambda: b"%PDF-1.7\n" + b"x" * 10,
        "application/pdf",
        400,
        "corrupt_pdf",
        "not a readable PDF",
    ),
    ("too many pdf pages", lambda: pdf_bytes(6), "application/pdf", 413, "too_many_pages", "limit is 5"),
    ("wrong content type", lambda: b"hello world", "text/plain", 415, "unsupported_media_type", "text/plain"),
    ("tiny image", lambda: png(colour_image((1, 1, 1), (1, 1))), "image/png", 400, "image_too_small", "1x1"),
]


def _empty_pdf() -> bytes:
    """A structurally valid PDF whose page tree is empty (PDFium refuses to open it)."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 3\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size 3 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref


BAD_FILES.append(("empty page tree", _empty_pdf, "application/pdf", 400, "no_pages", "has no pages"))


@pytest.mark.parametrize(
    ("label", "make", "ctype", "status", "kind", "phrase"), BAD_FILES, ids=[b[0] for b in BAD_FILES]
)
def test_bad_files_get_clear_4xx(server, label, make, ctype, status, kind, phrase):
    r = httpx.post(f"{server.url}/v1/ocr", files=[("file", ("upload.bin", make(), ctype))])
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == kind and err["code"] == status
    assert phrase in err["message"]
    assert "upload.bin" in err["message"] or kind == "too_many_pages"


@pytest.mark.parametrize(
    ("kwargs", "status", "kind"),
    [
        ({"content": b"just text", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"json": {"images": []}}, 400, "no_input"),
        ({"json": {"images": ["%%%notbase64"]}}, 400, "invalid_base64"),
        ({"json": {"images": ["https://example.com/a.png"]}}, 400, "remote_url_not_allowed"),
        ({"json": {"images": ["AAAA"], "bogus": 1}}, 400, "invalid_request"),
        (
            {
                "json": {
                    "images": [base64.b64encode(png(colour_image((0, 0, 0)))).decode()],
                    "generation": {"x": 1},
                }
            },
            400,
            "invalid_generation",
        ),
        ({"json": {"images": ["AAAA"], "dpi": 5000}}, 400, "invalid_request"),
    ],
    ids=[
        "text-body",
        "bad-json",
        "no-images",
        "bad-base64",
        "url",
        "unknown-field",
        "bad-generation",
        "bad-dpi",
    ],
)
def test_bad_requests_get_clear_4xx(server, kwargs, status, kind):
    r = httpx.post(f"{server.url}/v1/ocr", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind


def test_openai_client_chat_completion_and_models(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    (model,) = client.models.list().data
    assert model.id == "colour" and model.owned_by == "deepsynth"
    resp = client.chat.completions.create(
        model=model.id,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Free OCR."},
                    {"type": "image_url", "image_url": {"url": data_uri(colour_image((10, 20, 30)))}},
                ],
            }
        ],
        max_tokens=64,
    )
    assert resp.choices[0].message.content == "#0a141e"
    assert resp.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model=model.id,
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": data_uri(colour_image((1, 1, 1)))}}],
            }
        ],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "#010101"


def test_openai_client_errors_for_remote_urls_and_unknown_models(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="remote URLs are not fetched"):
        client.chat.completions.create(
            model="colour",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}],
                }
            ],
        )
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(
            model="gpt-4o",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_uri(colour_image((1, 1, 1)))}}
                    ],
                }
            ],
        )


def test_health_ready_metrics_and_404_are_json(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    assert 'deepsynth_requests_total{model="colour",route="/v1/ocr",status="ok"}' in metrics.text
    assert 'deepsynth_errors_total{model="colour",type="empty_file"}' in metrics.text
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def _batch_sizes_above_one(metrics_text: str) -> int:
    count = float(re.search(r"deepsynth_batch_size_count\{[^}]*\} (\S+)", metrics_text).group(1))
    le1 = float(re.search(r'deepsynth_batch_size_bucket\{le="1\.0"[^}]*\} (\S+)', metrics_text).group(1))
    return int(count - le1)


def test_concurrent_clients_form_batches_and_get_their_own_results():
    engine = ColourEngine(delay=0.03)
    with running_server(make_app(engine, max_batch_size=8, max_wait_ms=20)) as s:

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:

                async def one(i: int):
                    rgb = (i, 255 - i, (7 * i) % 256)
                    r = await client.post(
                        "/v1/ocr", files=[("file", (f"{i}.png", png(colour_image(rgb)), "image/png"))]
                    )
                    return rgb, r

                return await asyncio.gather(*(one(i) for i in range(32)))

        results = asyncio.run(main())
        metrics = httpx.get(f"{s.url}/metrics").text
    for (r, g, b), resp in results:
        assert resp.status_code == 200, resp.text
        assert resp.json()["pages"][0]["text"] == f"#{r:02x}{g:02x}{b:02x}"
    assert _batch_sizes_above_one(metrics) > 0
    assert max(engine.batch_sizes) > 1


def test_overload_answers_429_and_every_accepted_request_completes():
    engine = ColourEngine(delay=0.15)
    with running_server(make_app(engine, max_batch_size=2, max_wait_ms=0, max_queue=4)) as s:

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as client:

                async def one(i: int):
                    rgb = (i, i, i)
                    return rgb, await client.post("/v1/ocr", json={"images": [data_uri(colour_image(rgb))]})

                return await asyncio.gather(*(one(i) for i in range(40)))

        results = asyncio.run(main())
    statuses = [r.status_code for _, r in results]
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) >= 10 and statuses.count(200) >= 4
    for rgb, r in results:
        if r.status_code == 200:
            assert r.json()["pages"][0]["text"] == "#{:02x}{:02x}{:02x}".format(*rgb)
        else:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "queue_full"


def test_one_failing_image_does_not_fail_its_batch_neighbours():
    with running_server(make_app(ColourEngine(delay=0.02), max_batch_size=8, max_wait_ms=50)) as s:

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                colours = [(1, 1, 1), (255, 0, 1), (3, 3, 3)]
                return await asyncio.gather(
                    *(client.post("/v1/ocr", json={"images": [data_uri(colour_image(c))]}) for c in colours)
                )

        ok1, bad, ok3 = asyncio.run(main())
    assert ok1.json()["pages"][0]["text"] == "#010101" and ok3.json()["pages"][0]["text"] == "#030303"
    assert bad.status_code == 500 and "poison pixel" in bad.json()["error"]["message"]


def test_bearer_token_and_upload_limit():
    settings = ServerSettings(token="s3cret", limits=ServingLimits(max_upload_mb=0.05))
    with running_server(make_app(ColourEngine(), settings)) as s:
        img = {"images": [data_uri(colour_image((5, 5, 5)))]}
        r = httpx.post(f"{s.url}/v1/ocr", json=img)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (
            httpx.post(f"{s.url}/v1/ocr", json=img, headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{s.url}/v1/ocr", json=img, headers=auth).status_code == 200
        assert httpx.get(f"{s.url}/healthz").status_code == 200  # probes need no token
        big = png(Image.effect_noise((300, 300), 80).convert("RGB"))
        r = httpx.post(f"{s.url}/v1/ocr", files=[("file", ("big.png", big, "image/png"))], headers=auth)
        assert r.status_code == 413 and r.json()["error"]["type"] == "upload_too_large"

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(20):
                yield b"A" * 8192

        r = httpx.post(
            f"{s.url}/v1/ocr", content=chunks(), headers={**auth, "content-type": "application/json"}
        )
        assert r.status_code == 413
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="s3cret")
        assert client.models.list().data[0].id == "colour"


def test_shutdown_drains_accepted_requests():
    engine = ColourEngine(delay=0.2)
    results: list[httpx.Response] = []
    with running_server(make_app(engine, max_batch_size=1, max_wait_ms=0)) as s:

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                tasks = [
                    asyncio.create_task(
                        client.post("/v1/ocr", json={"images": [data_uri(colour_image((i, i, i)))]})
                    )
                    for i in range(4)
                ]
                await asyncio.sleep(0.3)  # all four accepted, at most two done
                s.should_exit = True  # what SIGTERM does
                return await asyncio.gather(*tasks)

        results = asyncio.run(main())
    assert [r.status_code for r in results] == [200] * 4
    assert [r.json()["pages"][0]["text"] for r in results] == [f"#{i:02x}{i:02x}{i:02x}" for i in range(4)]


def test_not_ready_while_warming_up_then_ready():
    gate = threading.Event()
    engine = ColourEngine(gate=gate)  # the warm-up call blocks until the gate opens
    with running_server(make_app(engine), ready=False) as s:
        assert httpx.get(f"{s.url}/healthz").status_code == 200
        ready = httpx.get(f"{s.url}/readyz")
        assert ready.status_code == 503 and "loading" in ready.json()["reason"]
        r = httpx.post(f"{s.url}/v1/ocr", json={"images": [data_uri(colour_image((1, 1, 1)))]})
        assert r.status_code == 503 and "warming up" in r.json()["error"]["message"]
        gate.set()
        for _ in range(200):
            if httpx.get(f"{s.url}/readyz").status_code == 200:
                break
            asyncio.run(asyncio.sleep(0.05))
        r = httpx.post(f"{s.url}/v1/ocr", json={"images": [data_uri(colour_image((1, 1, 1)))]}, timeout=10)
        assert r.status_code == 200


def test_request_timeout_is_a_504():
    engine = ColourEngine(delay=0.5)
    with running_server(make_app(engine, timeout_s=0.2, max_batch_size=1)) as s:
        r = httpx.post(f"{s.url}/v1/ocr", json={"images": [data_uri(colour_image((1, 1, 1)))]}, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"


def test_multipart_pdf_with_dpi_field_and_unknown_field(server):
    files = [("file", ("scan.pdf", pdf_bytes(1, (144, 72)), "application/pdf"))]
    r = httpx.post(f"{server.url}/v1/ocr", files=files, data={"dpi": "100"})
    assert r.status_code == 200, r.text
    (p,) = r.json()["pages"]
    assert (p["source"], p["width"], p["height"], p["text"]) == ("scan.pdf", 200, 100, "#ffffff")
    r = httpx.post(f"{server.url}/v1/ocr", files=files, data={"colour": "red"})
    assert r.status_code == 400 and "unknown form field 'colour'" in r.json()["error"]["message"]


def test_doc_type_labels_the_quality_metrics_and_is_validated(server):
    raw = base64.b64encode(png(colour_image((255, 255, 255)))).decode()
    r = httpx.post(f"{server.url}/v1/ocr", json={"images": [raw], "doc_type": "invoice"})
    assert r.status_code == 200, r.text
    files = [("files", ("a.png", png(colour_image((9, 9, 9))), "image/png"))]
    r = httpx.post(f"{server.url}/v1/ocr", files=files, data={"doc_type": "letter"})
    assert r.status_code == 200, r.text
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'deepsynth_outputs_total{doc_type="invoice",model="colour"} 1.0' in metrics
    assert 'deepsynth_outputs_total{doc_type="letter",model="colour"} 1.0' in metrics
    r = httpx.post(f"{server.url}/v1/ocr", json={"images": [raw], "doc_type": "Bad Type!"})
    assert r.status_code == 400 and "doc_type" in r.text
