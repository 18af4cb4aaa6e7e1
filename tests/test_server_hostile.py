"""Hostile-input suite: schemathesis against the app's own OpenAPI schema and hypothesis over request bodies,
all against one real server on loopback. Whatever arrives, the answer is never a 5xx and every error has the
one JSON shape. Bounded: ~50 examples per operation or property, no deadline (2 shared cores)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import CHECKS, load_all_checks

from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.api.protocol import EXAMPLE_IMAGE
from deepsynth.inference.service import OCRService
from deepsynth.observability import Observability
from deepsynth.observability.feedback import FeedbackSettings
from tests.serving_engines import ColourEngine, running_server

BOUNDED = settings(
    max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
ERROR_KEYS = {"message", "type", "code", "param"}


def make_app(engine: ColourEngine | None = None, settings: ServerSettings | None = None, **service_kw):
    engine = engine or ColourEngine()
    return create_app(OCRService(engine, obs=Observability("colour"), **service_kw), settings)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    feedback = FeedbackSettings(tmp_path_factory.mktemp("feedback"))  # on: its validators are attacked too
    with running_server(make_app(settings=ServerSettings(feedback=feedback))) as s:
        s.client = httpx.Client(base_url=s.url, timeout=30)  # type: ignore[attr-defined]
        s.statuses = Counter()  # type: ignore[attr-defined]
        yield s
        s.client.close()


def assert_sane(status: int, content_type: str, body: bytes, *, server_error: bool = False) -> None:
    """No 5xx (unless ``server_error``); an error is ``{"error": {message, type, code, param}}`` with ``code``
    = the status."""
    assert server_error or status < 500, body[:500]
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, body[:200])
        err = json.loads(body)["error"]
        assert set(err) == ERROR_KEYS and err["code"] == status, err
        assert isinstance(err["type"], str) and err["type"] and isinstance(err["message"], str)


# -- schemathesis: every operation of /openapi.json ------------------------------------------------------------

schema = schemathesis.openapi.from_dict(make_app().openapi())
load_all_checks()
# "schema-valid request accepted" cannot hold: the schema says "a base64 string", not "a decodable image"
CHECKED = [
    c
    for name, c in ((n, CHECKS.get_one(n)) for n in CHECKS.get_all_names())
    if name != "positive_data_acceptance"
]


@schema.parametrize()
@BOUNDED
def test_schemathesis_finds_no_5xx_and_only_documented_answers(case, server):
    response = case.call(base_url=server.url)
    server.statuses[(case.operation.label, response.status_code)] += 1
    ctype = (response.headers.get("content-type") or [""])[0]  # schemathesis keeps every header as a list
    assert_sane(response.status_code, ctype, response.content)
    case.validate_response(response, checks=CHECKED)


def test_schemathesis_reached_the_model_and_the_validators(server):
    """Run after the schemathesis cases: both POST routes both succeeded (the schema's examples) and failed."""
    seen = server.statuses
    if not seen:
        pytest.skip("run together with test_schemathesis_finds_no_5xx_and_only_documented_answers")
    for route, ok in (("POST /v1/ocr", 200), ("POST /v1/chat/completions", 200), ("POST /v1/feedback", 201)):
        assert seen[(route, ok)] >= 1 and seen[(route, 400)] >= 10, seen
        assert seen[(route, 405)] >= 1, seen  # unsupported methods were tried (with an Allow header)


# -- hypothesis: arbitrary and near-valid bodies ---------------------------------------------------------------

KEYS = st.sampled_from(
    ["images", "dpi", "generation", "messages", "role", "content", "type", "image_url", "url", "text", "model",
     "max_tokens", "top_p", "temperature", "stream", "n", "data", "name", "max_new_tokens", "prompt",
     "request_id", "page", "image", "doc_type", "metadata"]
)  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON = st.recursive(
    SCALARS | st.just(EXAMPLE_IMAGE),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@BOUNDED
@given(route=st.sampled_from(["/v1/ocr", "/v1/chat/completions", "/v1/feedback"]), body=JSON)
def test_any_json_body_is_answered_without_a_5xx(server, route, body):
    r = server.client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    assert_sane(r.status_code, r.headers.get("content-type", ""), r.content)


def valid_chat() -> dict:
    image = {"type": "image_url", "image_url": {"url": EXAMPLE_IMAGE}}
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "Free OCR."}, image]}]}


CHAT_FIELDS = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream", "seed",
               "stop", "user", "stream_options", "presence_penalty", "frequency_penalty", "logprobs",
               "top_logprobs"]  # fmt: skip


@BOUNDED
@given(field=st.sampled_from(CHAT_FIELDS), value=JSON)
def test_a_malformed_chat_field_is_a_400_naming_it(server, field, value):
    r = server.client.post("/v1/chat/completions", json={**valid_chat(), field: value})
    assert_sane(r.status_code, r.headers.get("content-type", ""), r.content)
    if r.status_code == 400:
        err = r.json()["error"]
        assert err["param"] and err["param"].startswith(field) and field in err["message"], err
    else:  # a value of the right type: the request is served (or, for an unknown model, a 404)
        assert r.status_code in {200, 404}, r.text


@BOUNDED
@given(depth=st.integers(1, 200_000), opener=st.sampled_from(["[", '{"a":']))
def test_nesting_of_any_depth_is_bounded(server, depth, opener):
    closer = "]" if opener == "[" else "}"
    body = '{"images": ' + opener * depth + "1" + closer * depth + "}"
    r = server.client.post("/v1/ocr", content=body, headers={"content-type": "application/json"})
    assert_sane(r.status_code, r.headers.get("content-type", ""), r.content)
    assert r.status_code == 400


@BOUNDED
@given(
    data=st.binary(max_size=512),
    ctype=st.sampled_from(
        [
            "application/json",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
            "image/png",
        ]
    ),
    route=st.sampled_from(["/v1/ocr", "/v1/chat/completions"]),
)
def test_arbitrary_bytes_under_any_content_type(server, data, ctype, route):
    r = server.client.post(route, content=data, headers={"content-type": ctype} if ctype else {})
    assert_sane(r.status_code, r.headers.get("content-type", ""), r.content)
    assert 400 <= r.status_code < 500


@BOUNDED
@given(
    fields=st.dictionaries(
        st.sampled_from(["dpi", "generation", "colour"]), st.text(max_size=30), max_size=3
    ),
    payload=st.binary(max_size=64) | st.just(b""),
)
def test_multipart_fields_and_files(server, fields, payload):
    files = [("files", ("f.bin", payload, "application/octet-stream"))]
    r = server.client.post("/v1/ocr", files=files, data=fields)
    assert_sane(r.status_code, r.headers.get("content-type", ""), r.content)
    assert 400 <= r.status_code < 500


# -- errors raised while the server shuts down -----------------------------------------------------------------


def test_a_request_cut_by_shutdown_gets_a_json_503():
    """The graceful-shutdown window runs out while a request waits on the model: it gets the API's JSON error
    (not uvicorn's plain-text 500)."""
    gate = threading.Event()
    engine = ColourEngine(gate=gate)
    with running_server(make_app(engine), ready=False, graceful_s=0.3) as s:
        gate.set()  # warm-up passes; the next calls wait on the gate again
        for _ in range(200):
            if httpx.get(f"{s.url}/readyz").status_code == 200:
                break
            asyncio.run(asyncio.sleep(0.02))
        gate.clear()

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                task = asyncio.create_task(client.post("/v1/ocr", json={"images": [EXAMPLE_IMAGE]}))
                await asyncio.sleep(0.3)  # accepted and waiting on the model
                s.should_exit = True
                return await task

        r = asyncio.run(main())
        gate.set()  # let the model finish so the drain ends
    assert_sane(r.status_code, r.headers.get("content-type", ""), r.content, server_error=True)
    assert r.status_code == 503 and r.json()["error"]["type"] == "shutting_down", r.text
