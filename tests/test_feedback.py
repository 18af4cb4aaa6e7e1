"""POST /v1/feedback on a real uvicorn server: corrections by request id (the kept input) or with the image,
stored as labelled data the loop's inbox reads with its doc_type; bad feedback is a 4xx naming the field and
loses nothing; retention, deletion (`deepsynth samples --feedback`) and the audit log."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from deepsynth.data import group_key, open_sources
from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.limits import ServingLimits
from deepsynth.inference.service import OCRService
from deepsynth.loop.inbox import scan
from deepsynth.loop.state import LoopState
from deepsynth.observability import Observability
from deepsynth.observability.feedback import FeedbackSettings, FeedbackStore
from tests.serving_engines import ColourEngine, colour_image, data_uri, pdf_bytes, png, running_server


def _post(url: str, **kw) -> httpx.Response:
    return httpx.post(url, timeout=120, **kw)  # the machine may be busy


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _app(feedback: FeedbackSettings | None, **limits):
    engine = ColourEngine()
    service = OCRService(engine, obs=Observability(engine.name))
    settings = ServerSettings(warmup=False, feedback=feedback, limits=ServingLimits(**limits))
    return create_app(service, settings)


@pytest.fixture
def served(tmp_path):
    """A server storing feedback into an entry of a loop inbox (``inbox/feedback``)."""
    directory = tmp_path / "inbox" / "feedback"
    with running_server(_app(FeedbackSettings(directory=directory), max_upload_mb=1.0)) as s:
        yield s, directory


def test_feedback_by_request_id_and_by_image_reaches_the_loop_inbox_with_its_doc_type(served, tmp_path):
    s, directory = served
    red = _jpeg(colour_image((200, 10, 10)))
    files = [
        ("files", ("red.jpg", red, "image/jpeg")),
        ("files", ("doc.pdf", pdf_bytes(2), "application/pdf")),
    ]
    ocr = _post(f"{s.url}/v1/ocr", files=files, data={"doc_type": "receipt", "dpi": "144"})
    assert ocr.status_code == 200, ocr.text
    rid = ocr.json()["id"]
    part = {"type": "image_url", "image_url": {"url": data_uri(colour_image((1, 2, 3)))}}
    chat = _post(f"{s.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": [part]}]})
    assert chat.status_code == 200, chat.text

    post = lambda **body: _post(f"{s.url}/v1/feedback", json=body)  # noqa: E731
    first = post(request_id=rid, page=1, text="Total 12,40 EUR", doc_type="receipt")
    assert first.status_code == 201, first.text
    assert first.json()["id"] == f"fb-{rid}-p1" and first.json()["object"] == "feedback"
    pdf_page = post(request_id=rid, page=3, text="second PDF page", doc_type="receipt")
    assert pdf_page.status_code == 201, pdf_page.text
    by_chat_id = post(request_id=chat.json()["id"], text="Rechnung Nr. 7", doc_type="invoice")
    assert (
        by_chat_id.status_code == 201
        and by_chat_id.json()["request_id"] == chat.json()["id"][len("chatcmpl-") :]
    )
    sent = png(colour_image((0, 99, 0), (80, 20)))
    by_image = post(image=base64.b64encode(sent).decode(), text="Lettre du 3 mai", doc_type="letter")
    assert by_image.status_code == 201, by_image.text
    corrected = post(request_id=rid, page=1, text="Total 12,40 EUR (TVA incl.)", doc_type="receipt")
    assert corrected.status_code == 201 and corrected.json()["id"] == first.json()["id"]

    rows = {r["id"]: r for r in map(json.loads, (directory / "manifest.jsonl").read_text().splitlines())}
    assert len(rows) == 4  # the second correction of page 1 replaced the first
    page1 = rows[f"fb-{rid}-p1"]
    assert page1["text"] == "Total 12,40 EUR (TVA incl.)" and page1["page_id"] == rid
    assert (directory / page1["image"]).read_bytes() == red  # a one-page image is stored as it was sent
    page3 = Image.open(directory / rows[f"fb-{rid}-p3"]["image"])
    assert page3.size == (400, 200)  # the PDF's second page, rendered at the request's 144 dpi
    assert len(list((directory / "images").iterdir())) == 4  # the replaced correction's image is gone

    inbox_state = LoopState()
    found = scan(tmp_path / "inbox", inbox_state, "page_id", 0.15, 0)
    assert found.bad == {} and found.read == {"feedback": {"receipt": 2, "invoice": 1, "letter": 1}}
    again = _post(f"{s.url}/v1/ocr", json={"images": [data_uri(colour_image((7, 7, 7)))]}).json()["id"]
    assert post(request_id=again, text="late receipt", doc_type="receipt").status_code == 201
    rescan = scan(tmp_path / "inbox", inbox_state, "page_id", 0.15, 0)
    assert rescan.read == {"feedback": {"receipt": 1, "invoice": 0, "letter": 0}}  # counted once by id
    receipts = inbox_state.type("receipt")  # the trigger counts documents: a request's pages are one
    assert (receipts.labelled, receipts.n_documents) == (3, 2)
    samples = {x.id: x for x in open_sources([str(directory)], decode=True) if x.id != f"fb-{again}-p1"}
    assert {i: (x.doc_type, x.text) for i, x in samples.items()} == {
        i: (r["doc_type"], r["text"]) for i, r in rows.items()
    }
    assert group_key(samples[f"fb-{rid}-p3"]) == rid  # a request's pages share one holdout decision
    letter = next(x for x in samples.values() if x.doc_type == "letter")
    assert letter.image.size == (80, 20) and letter.image.getpixel((5, 5)) == (0, 99, 0)

    metrics = httpx.get(f"{s.url}/metrics", timeout=60).text
    assert 'deepsynth_feedback_stored_total{doc_type="receipt",model="colour"} 4.0' in metrics
    assert 'deepsynth_feedback_stored_total{doc_type="letter",model="unknown"} 1.0' in metrics

    audit = [json.loads(line) for line in (directory / "audit.jsonl").read_text().splitlines()]
    actions = [e["action"] for e in audit]
    assert actions.count("store") == 6 and actions.count("keep_input") == 3
    assert [e["reason"] for e in audit if e["action"] == "delete"] == ["superseded"]
    assert "Total" not in (directory / "audit.jsonl").read_text()  # never the text


def test_bad_feedback_is_a_4xx_naming_the_field_and_loses_nothing(served):
    s, directory = served
    ocr = _post(f"{s.url}/v1/ocr", json={"images": [data_uri(colour_image((5, 5, 5)))]})
    rid = ocr.json()["id"]
    ok = _post(f"{s.url}/v1/feedback", json={"request_id": rid, "text": "kept", "doc_type": "receipt"})
    assert ok.status_code == 201, ok.text
    before = (directory / "manifest.jsonl").read_bytes()
    big = base64.b64encode(png(Image.effect_noise((800, 800), 64).convert("RGB"))).decode()
    bomb = base64.b64encode(png(Image.new("1", (20000, 20000)))).decode()  # 400 MP in ~60 KB
    cases = [
        (
            {"request_id": "never-seen", "text": "x", "doc_type": "receipt"},
            404,
            "unknown_request",
            "request_id",
        ),
        ({"request_id": rid, "text": "", "doc_type": "receipt"}, 400, "invalid_request", "text"),
        ({"request_id": rid, "text": "  \n", "doc_type": "receipt"}, 400, "invalid_request", "text"),
        ({"request_id": rid, "text": 42, "doc_type": "receipt"}, 400, "invalid_request", "text"),
        ({"request_id": rid, "text": "x" * 20_001, "doc_type": "receipt"}, 400, "invalid_request", "text"),
        ({"request_id": rid, "text": "x", "doc_type": "Bad Type!"}, 400, "invalid_request", "doc_type"),
        ({"request_id": rid, "text": "x"}, 400, "invalid_request", "doc_type"),
        ({"request_id": rid, "page": 2, "text": "x", "doc_type": "receipt"}, 400, "invalid_request", "page"),
        ({"text": "x", "doc_type": "receipt"}, 400, "invalid_request", "request_id"),
        (
            {"request_id": rid, "image": big[:40], "text": "x", "doc_type": "a"},
            400,
            "invalid_request",
            "image",
        ),
        (
            {"image": base64.b64encode(b"not an image").decode(), "text": "x", "doc_type": "a"},
            400,
            "invalid_image",
            "image",
        ),
        ({"image": big, "text": "x", "doc_type": "receipt"}, 413, "upload_too_large", None),
        ({"image": bomb, "text": "x", "doc_type": "receipt"}, 413, "image_too_large", "image"),
        (
            {"request_id": rid, "text": "x", "doc_type": "receipt", "label": "?"},
            400,
            "invalid_request",
            "label",
        ),
    ]
    for body, status, kind, param in cases:
        r = _post(f"{s.url}/v1/feedback", json=body)
        err = r.json()["error"]
        assert (r.status_code, err["type"], err["param"]) == (status, kind, param), (body.keys(), r.text)
    r = _post(f"{s.url}/v1/feedback", content=b"text=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert (directory / "manifest.jsonl").read_bytes() == before  # nothing stored was lost or changed
    assert len(list((directory / "images").iterdir())) == 1


def test_feedback_off_is_refused_and_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with running_server(_app(None)) as s:
        _post(f"{s.url}/v1/ocr", json={"images": [data_uri(colour_image((5, 5, 5)))]})
        r = _post(f"{s.url}/v1/feedback", json={"request_id": "x", "text": "x", "doc_type": "a"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "feedback_disabled"
    assert "--feedback-dir" in r.json()["error"]["message"]
    assert list(tmp_path.iterdir()) == []


class Clock:
    def __init__(self, t: float = 1_780_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_retention_deletion_and_audit_of_corrections_and_kept_inputs(tmp_path):
    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    clock = Clock()
    settings = FeedbackSettings(
        tmp_path / "fb", keep_inputs_hours=1, max_inputs=2, max_count=3, max_age_days=2, background=False
    )
    store = FeedbackStore(settings, clock=clock)
    image = png(colour_image((1, 1, 1)))
    for i in range(3):
        clock.t += 60
        store.keep_input(f"r{i}", [(image, "a.png", "image/png")], [(0, 1)], model="m", doc_type="receipt")
    assert [m["request_id"] for m in store.inputs()] == ["r1", "r2"]  # max_inputs=2: the oldest went
    assert store.find_input("r0") is None and store.find_input("chatcmpl-r2").files[0][0] == image
    for i in range(4):
        clock.t += 3600
        store.add(f"text {i}", "receipt", image, "png", request_id=f"r{i}", page=1, model="m")
    assert [r["id"] for r in store.feedback()] == ["fb-r1-p1", "fb-r2-p1", "fb-r3-p1"]  # max_count=3
    assert store.inputs() == []  # kept 1 hour: all expired
    clock.t += 2 * 86400 - 2 * 3600 + 1  # fb-r1 is now older than 2 days, fb-r2 is not
    assert store.enforce_retention() == 1 and [r["id"] for r in store.feedback()] == ["fb-r2-p1", "fb-r3-p1"]
    store.keep_input("r3", [(image, "a.png", "image/png")], [(0, 1)], model="m")

    runner = CliRunner()
    listed = runner.invoke(app, ["samples", "list", "--feedback", "--dir", str(store.root)])
    assert listed.exit_code == 0, listed.output
    assert (
        "fb-r3-p1" in listed.stdout and "doc_type=receipt" in listed.stdout and "text 3" not in listed.stdout
    )
    assert "2 correction(s); inputs kept of 1 request(s)" in listed.stderr
    shown = runner.invoke(app, ["samples", "show", "--feedback", "fb-r2-p1", "--dir", str(store.root)])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["text"] == "text 2"
    subject = [
        "samples",
        "delete",
        "--feedback",
        "--request-id",
        "r3",
        "--reason",
        "subject_request",
        "--dir",
    ]
    gone = runner.invoke(app, [*subject, str(store.root)])
    assert gone.exit_code == 0 and "deleted 1 correction(s) and the kept input of 1 request(s)" in gone.stdout
    store.add("text 4", "receipt", image, "png", request_id="r4", page=1)  # the server's store writes next
    assert [r["id"] for r in store.feedback()] == ["fb-r2-p1", "fb-r4-p1"]  # the CLI's deletion holds
    assert store.inputs() == [] and len(list(store.images_dir.iterdir())) == 2
    missing = runner.invoke(app, ["samples", "delete", "--feedback", "nope", "--dir", str(store.root)])
    assert missing.exit_code == 1 and "not found: nope" in missing.stdout

    reasons = [
        (e["action"], e.get("reason")) for e in store.audit.entries() if e["action"].startswith("delete")
    ]
    assert reasons.count(("delete", "max_count")) == 1 and reasons.count(("delete", "max_age")) == 1
    assert (
        reasons.count(("delete_input", "max_inputs")) == 1 and reasons.count(("delete_input", "max_age")) == 2
    )
    subject = [r for r in reasons if r[1] == "subject_request"]
    assert subject == [("delete", "subject_request"), ("delete_input", "subject_request")]
    assert "text " not in store.audit.path.read_text()


def test_a_failed_manifest_write_keeps_the_old_manifest_and_no_orphan_image(tmp_path, monkeypatch):
    store = FeedbackStore(FeedbackSettings(tmp_path / "fb", background=False))
    store.add("first", "receipt", b"\x89PNG-1", "png")
    before = store.manifest.read_bytes()

    def full_disk(rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write", full_disk)
    with pytest.raises(OSError):
        store.add("second", "receipt", b"\x89PNG-2", "png")
    assert store.manifest.read_bytes() == before and len(list(store.images_dir.iterdir())) == 1


def test_inputs_are_kept_in_the_background_and_found_once_written(tmp_path):
    store = FeedbackStore(FeedbackSettings(tmp_path / "fb"))
    try:
        files = [(b"%PDF-fake", "doc.pdf", "application/pdf"), (b"img", "b.png", None)]
        store.keep_input("req-1", files, [(0, 1), (0, 2), (1, 1)], model="m", doc_type="invoice", dpi=200.0)
        kept = store.find_input("req-1")  # waits for the writer
        assert kept is not None and kept.files == files and kept.pages == [(0, 1), (0, 2), (1, 1)]
        assert (kept.dpi, kept.doc_type, kept.model) == (200.0, "invoice", "m")
        assert not any(p.name.startswith(".") for p in store.inputs_dir.iterdir())
    finally:
        store.close()


def test_serve_refuses_a_bad_feedback_setting_before_loading_a_model(tmp_path, monkeypatch):
    import socket

    from typer.testing import CliRunner

    from deepsynth.cli.main import app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("DEEPSYNTH_FEEDBACK_MAX_COUNT", "0")
    args = [
        "serve",
        "--model",
        "no-such-engine:x",
        "--port",
        str(port),
        "--feedback-dir",
        str(tmp_path / "fb"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "DEEPSYNTH_FEEDBACK_MAX_COUNT must be >= 1" in result.output
    assert not (tmp_path / "fb").exists()
