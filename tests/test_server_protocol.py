"""The API's request protocol on a real server: pydantic-validated bodies, one error shape, 405 + Allow,
depth-bounded JSON, an OpenAPI schema that declares the request bodies, docs off by default."""

from __future__ import annotations

import time

import httpx
import pytest

from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.service import OCRService
from deepsynth.observability import Observability
from tests.serving_engines import ColourEngine, colour_image, data_uri, running_server


def make_app(settings: ServerSettings | None = None):
    return create_app(OCRService(ColourEngine(), obs=Observability("colour")), settings)


@pytest.fixture(scope="module")
def server():
    with running_server(make_app()) as s:
        yield s


def chat_body(**extra) -> dict:
    image = {"type": "image_url", "image_url": {"url": data_uri(colour_image((9, 9, 9)))}}
    return {"messages": [{"role": "user", "content": [image]}], **extra}


def assert_error(r: httpx.Response, status: int, kind: str, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    err = body["error"]
    assert (err["type"], err["code"]) == (kind, status)
    if param is not None:
        assert err["param"] == param and param in err["message"]
    return err


@pytest.mark.parametrize("route", ["/v1/ocr", "/v1/chat/completions"])
def test_deeply_nested_json_is_a_fast_400_and_the_server_stays_healthy(server, route):
    depth = 100_000
    t0 = time.perf_counter()
    r = httpx.post(
        f"{server.url}{route}",
        content=b'{"images": ' + b"[" * depth + b"]" * depth + b"}",
        headers={"content-type": "application/json"},
    )
    assert time.perf_counter() - t0 < 5
    assert "recursion limit" in assert_error(r, 400, "invalid_json")["message"]
    ok = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body())
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "#090909"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_p": "abc"}, "top_p"),
        ({"top_p": [0.5]}, "top_p"),
        ({"top_p": 3}, "top_p"),
        ({"temperature": {"a": 1}}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"stream": "maybe"}, "stream"),
        ({"logit_bias_typo": 1}, "logit_bias_typo"),
    ],
)
def test_malformed_chat_fields_are_400s_naming_the_field(server, extra, param):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(**extra))
    assert_error(r, 400, "invalid_request", param)


def test_malformed_nested_fields_are_named_with_their_path(server):
    body = chat_body()
    body["messages"][0]["content"].append({"type": "input_audio", "input_audio": {}})
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert_error(r, 400, "invalid_request", "messages[0].content[1]")
    body = chat_body()
    body["messages"][0]["content"][0]["image_url"] = {"url": 7}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert_error(r, 400, "invalid_request", "messages[0].content[0].image_url.url")
    r = httpx.post(f"{server.url}/v1/ocr", json={"images": [{"data": "AAAA", "colour": "red"}]})
    assert_error(r, 400, "invalid_request", "images[0].colour")
    gen = {"images": [data_uri(colour_image((1, 2, 3)))], "generation": {"max_new_tokens": "many"}}
    assert_error(httpx.post(f"{server.url}/v1/ocr", json=gen), 400, "invalid_generation")
    files = [("file", ("a.png", b"x", "image/png"))]
    r = httpx.post(f"{server.url}/v1/ocr", files=files, data={"generation": '{"top_k": -1}'})
    assert_error(r, 400, "invalid_generation")


def test_generation_overrides_reach_the_engine(server):
    r = httpx.post(
        f"{server.url}/v1/ocr",
        json={"images": [data_uri(colour_image((1, 2, 3)))], "generation": {"max_new_tokens": 7}},
    )
    assert r.status_code == 200 and r.json()["pages"][0]["text"] == "#010203"


def test_405_has_an_allow_header_and_the_error_shape(server):
    r = httpx.get(f"{server.url}/v1/ocr")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    r = httpx.delete(f"{server.url}/healthz")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET"


def test_docs_are_off_by_default_and_the_schema_declares_request_bodies(server):
    assert_error(httpx.get(f"{server.url}/docs"), 404, "not_found")
    schema = httpx.get(f"{server.url}/openapi.json").json()
    ocr = schema["paths"]["/v1/ocr"]["post"]["requestBody"]["content"]
    assert set(ocr) == {"application/json", "multipart/form-data"}
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    name = chat["schema"]["$ref"].rsplit("/", 1)[1]
    assert schema["components"]["schemas"][name]["additionalProperties"] is False
    with running_server(make_app(ServerSettings(docs=True))) as s:
        assert httpx.get(f"{s.url}/docs").status_code == 200
