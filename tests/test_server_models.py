"""Several models behind one server (real uvicorn on loopback): selection by name and doc type, a routing
table, per-model queues (a busy model does not starve another), per-model metrics, and load / reload /
unload while requests keep coming."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.pool import ModelPool, RoutingTable, parse_model_option
from deepsynth.inference.service import OCRService
from deepsynth.models import registry
from deepsynth.observability import Observability
from tests.serving_engines import ColourEngine, colour_image, data_uri, running_server

ADMIN = {"Authorization": "Bearer s3cret"}


def service(name: str, engine: ColourEngine, **kw) -> OCRService:
    return OCRService(engine, model_id=name, obs=Observability(name), **kw)


def body(rgb=(1, 2, 3), **fields) -> dict:
    return {"images": [data_uri(colour_image(rgb))], **fields}


@pytest.fixture
def colour_spec(monkeypatch):
    """`colour-test[:DELAY]` resolves through the real registry to a ColourEngine (for admin loads)."""
    monkeypatch.setitem(
        registry.ENGINES, "colour-test", registry.Family("tests.serving_engines:build_colour")
    )


def test_requests_pick_their_model_by_name_doc_type_and_routing_default():
    engines = {n: ColourEngine() for n in ("print", "fraktur", "forms")}
    pool = ModelPool(
        {n: service(n, e) for n, e in engines.items()},
        default="print",
        routing=RoutingTable({"book": "fraktur", "invoice": "forms"}, default="forms"),
    )
    with running_server(create_app(pool, ServerSettings(warmup=False))) as s:
        ocr = f"{s.url}/v1/ocr"
        assert httpx.post(ocr, json=body()).json()["model"] == "forms"  # no type: the routing default
        assert httpx.post(ocr, json=body(doc_type="book")).json()["model"] == "fraktur"
        assert httpx.post(ocr, json=body(doc_type="letter")).json()["model"] == "forms"
        assert httpx.post(ocr, json=body(model="print", doc_type="book")).json()["model"] == "print"
        form = httpx.post(ocr, files={"file": ("a.png", b"", "image/png")}, data={"model": "nope"})
        assert form.status_code == 404  # the model is checked before the (empty) file is decoded
        err = form.json()["error"]
        assert err["type"] == "model_not_found" and err["param"] == "model"
        assert "print, fraktur, forms" in err["message"]
        assert [len(e.batch_sizes) for e in engines.values()] == [1, 1, 2]

        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0)
        cards = client.models.list().data
        assert [c.id for c in cards] == ["print", "fraktur", "forms"]
        assert cards[0].default and cards[2].doc_types == ["invoice"]
        msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(colour_image((9, 9, 9)))}}]}]  # fmt: skip
        resp = client.chat.completions.create(model="fraktur", messages=msg)
        assert resp.model == "fraktur" and resp.choices[0].message.content == "#090909"
        assert len(engines["fraktur"].batch_sizes) == 2
        with pytest.raises(openai.NotFoundError, match="known models: print, fraktur, forms"):
            client.chat.completions.create(model="gpt-4o", messages=msg)

        text = httpx.get(f"{s.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # one family per name: parseable
    requests = {
        (x.labels["model"], x.labels["route"], x.labels["status"]): x.value
        for x in families["deepsynth_requests"].samples
        if x.name == "deepsynth_requests_total"
    }
    assert requests[("fraktur", "/v1/ocr", "ok")] == 1 and requests[("forms", "/v1/ocr", "ok")] == 2
    assert requests[("fraktur", "/v1/chat/completions", "ok")] == 1
    assert requests[("", "/v1/ocr", "404")] == 1  # a request that reaches no model: no model's label
    assert requests[("", "/v1/chat/completions", "404")] == 1 and ("print", "/v1/ocr", "404") not in requests
    batches = {
        x.labels["model"]: x.value
        for x in families["deepsynth_batch_size"].samples
        if x.name.endswith("_count")
    }
    assert batches == {"print": 1, "fraktur": 2, "forms": 2}
    errors = {(x.labels["model"], x.labels["type"]) for x in families["deepsynth_errors"].samples}
    assert ("", "model_not_found") in errors and ("print", "model_not_found") not in errors
    in_flight = [x.value for x in families["deepsynth_requests_in_flight"].samples]
    assert in_flight and all(v == 0 for v in in_flight)  # moved to the chosen model and back to 0


def test_chat_metadata_doc_type_routes_and_labels_like_ocr():
    engines = {n: ColourEngine() for n in ("print", "fraktur")}
    pool = ModelPool(
        {n: service(n, e) for n, e in engines.items()}, routing=RoutingTable({"book": "fraktur"})
    )
    with running_server(create_app(pool, ServerSettings(warmup=False))) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0)
        msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(colour_image((9, 9, 9)))}}]}]  # fmt: skip
        routed = client.chat.completions.create(messages=msg, model=None, metadata={"doc_type": "book", "user": "u1"})  # type: ignore[arg-type]  # fmt: skip
        assert routed.model == "fraktur" and routed.choices[0].message.content == "#090909"
        unrouted = client.chat.completions.create(messages=msg, model=None, metadata={"doc_type": "letter"})  # type: ignore[arg-type]  # fmt: skip
        assert unrouted.model == "print"  # a type the table does not route: the default model
        named = client.chat.completions.create(messages=msg, model="print", metadata={"doc_type": "book"})
        assert named.model == "print"  # a named model wins over the routed type, as on /v1/ocr
        for metadata, param in (
            ({"doc_type": "Bad Type!"}, "metadata.doc_type"),
            ({"doc_type": 3}, "metadata.doc_type"),
            ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ):
            r = httpx.post(f"{s.url}/v1/chat/completions", json={"messages": msg, "metadata": metadata})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        metrics = httpx.get(f"{s.url}/metrics").text
    assert 'deepsynth_outputs_total{doc_type="book",model="fraktur"} 1.0' in metrics
    assert 'deepsynth_outputs_total{doc_type="book",model="print"} 1.0' in metrics
    assert 'deepsynth_outputs_total{doc_type="letter",model="print"} 1.0' in metrics
    assert [len(e.batch_sizes) for e in engines.values()] == [2, 1]


def test_a_busy_model_does_not_starve_another():
    gate = threading.Event()
    slow, fast = ColourEngine(gate=gate), ColourEngine()
    pool = ModelPool({"slow": service("slow", slow, max_batch_size=1), "fast": service("fast", fast)})
    with running_server(create_app(pool, ServerSettings(warmup=False))) as s:
        slow_results: list[httpx.Response] = []

        def call_slow() -> None:
            slow_results.append(httpx.post(f"{s.url}/v1/ocr", json=body(model="slow"), timeout=60))

        threads = [threading.Thread(target=call_slow) for _ in range(3)]
        for t in threads:
            t.start()
        while not slow.batch_sizes:  # the slow model is now busy (held by the gate) with 2 more queued
            time.sleep(0.01)
        answers = [
            httpx.post(f"{s.url}/v1/ocr", json=body((i, i, i), model="fast"), timeout=10) for i in range(5)
        ]
        assert [a.json()["pages"][0]["text"] for a in answers] == [
            f"#{i:02x}{i:02x}{i:02x}" for i in range(5)
        ]
        assert not slow_results  # the slow model is held (gate closed) while the fast one answered all five
        gate.set()
        for t in threads:
            t.join(30)
    assert [r.status_code for r in slow_results] == [200, 200, 200]


def wait_for_answers(statuses: list[int], n: int, timeout_s: float = 30.0) -> int:
    """Wait until ``n`` more answers arrived (the machine may be busy: no fixed sleeps)."""
    target, deadline = len(statuses) + n, time.monotonic() + timeout_s
    while len(statuses) < target and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(statuses)


def test_load_reload_unload_while_requests_keep_coming(colour_spec):
    first = ColourEngine(delay=0.01)
    pool = ModelPool({"main": service("main", ColourEngine()), "lines": service("lines", first)})
    settings = ServerSettings(token="s3cret", warmup=False)
    with running_server(create_app(pool, settings)) as s:
        admin = f"{s.url}/admin/models"
        statuses: list[int] = []
        models_seen: set[str] = set()
        stop = threading.Event()

        def hammer(model: str) -> None:
            with httpx.Client(headers=ADMIN, timeout=30) as client:
                while not stop.is_set():
                    r = client.post(f"{s.url}/v1/ocr", json=body(model=model))
                    statuses.append(r.status_code)
                    models_seen.add(r.json().get("model", r.text))

        workers = [threading.Thread(target=hammer, args=("lines",)) for _ in range(4)]
        for w in workers:
            w.start()
        before = wait_for_answers(statuses, 5)
        r = httpx.post(
            admin, json={"action": "reload", "name": "lines", "spec": "colour-test:0.02"}, headers=ADMIN
        )
        assert r.status_code == 200 and r.json()["status"] == "reloaded", r.text
        served_by_first = len(first.batch_sizes)
        wait_for_answers(statuses, 5)
        r = httpx.post(admin, json={"action": "reload", "name": "lines"}, headers=ADMIN)  # same spec again
        assert r.status_code == 200, r.text
        wait_for_answers(statuses, 5)
        stop.set()
        for w in workers:
            w.join(30)
        assert len(statuses) > before > 0 and set(statuses) == {200}  # zero errors across two reloads
        assert len(first.batch_sizes) == served_by_first  # the replaced engine got nothing after the switch
        assert pool.models["lines"].service.engine.engine.batch_sizes  # the newest engine serves

        r = httpx.post(admin, json={"action": "load", "name": "extra", "spec": "colour-test"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["models"] == ["main", "lines", "extra"]
        assert (
            httpx.post(f"{s.url}/v1/ocr", json=body(model="extra"), headers=ADMIN).json()["model"] == "extra"
        )
        r = httpx.post(admin, json={"action": "unload", "name": "extra"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["models"] == ["main", "lines"]
        gone = httpx.post(f"{s.url}/v1/ocr", json=body(model="extra"), headers=ADMIN)
        assert gone.status_code == 404 and "known models: main, lines" in gone.json()["error"]["message"]

        refused = {
            "no token": httpx.post(admin, json={"action": "unload", "name": "lines"}),
            "default": httpx.post(admin, json={"action": "unload", "name": "main"}, headers=ADMIN),
            "twice": httpx.post(admin, json={"action": "load", "name": "main", "spec": "colour-test"}, headers=ADMIN),
            "bad spec": httpx.post(admin, json={"action": "load", "name": "x", "spec": "no-such-engine"}, headers=ADMIN),
            "unknown": httpx.post(admin, json={"action": "reload", "name": "zzz"}, headers=ADMIN),
        }  # fmt: skip
        got = {k: (r.status_code, r.json()["error"]["type"]) for k, r in refused.items()}
        assert got == {
            "no token": (401, "unauthorized"),
            "default": (409, "model_conflict"),
            "twice": (409, "model_conflict"),
            "bad spec": (400, "model_load_error"),
            "unknown": (404, "model_not_found"),
        }
        assert "no-such-engine" in refused["bad spec"].json()["error"]["message"]
        assert pool.names == ["main", "lines"]


def test_unload_waits_for_the_models_in_flight_requests(colour_spec):
    gate = threading.Event()
    held = ColourEngine(gate=gate)
    pool = ModelPool({"main": service("main", ColourEngine()), "held": service("held", held)})
    with running_server(create_app(pool, ServerSettings(token="s3cret", warmup=False))) as s:
        results: list[httpx.Response] = []
        t = threading.Thread(
            target=lambda: results.append(
                httpx.post(f"{s.url}/v1/ocr", json=body(model="held"), headers=ADMIN, timeout=30)
            )
        )
        t.start()
        while not held.batch_sizes:
            time.sleep(0.01)
        threading.Timer(0.3, gate.set).start()
        t0 = time.perf_counter()
        r = httpx.post(
            f"{s.url}/admin/models", json={"action": "unload", "name": "held"}, headers=ADMIN, timeout=30
        )
        waited = time.perf_counter() - t0
        t.join(30)
    assert r.status_code == 200 and waited >= 0.25  # it waited for the request that held the model
    assert results[0].status_code == 200 and results[0].json()["model"] == "held"


def test_a_routing_table_naming_a_missing_model_is_refused(tmp_path):
    table = tmp_path / "routing.yaml"
    table.write_text("default: print\nroutes:\n  book: fraktur\n  invoice: forms\n")
    with pytest.raises(
        ValueError, match=r"not served: 'book' -> 'fraktur', 'invoice' -> 'forms'; served: print"
    ):
        ModelPool({"print": service("print", ColourEngine())}, routing=RoutingTable.from_yaml(table))
    with pytest.raises(ValueError, match="default model 'nope' is not served"):
        ModelPool({"print": service("print", ColourEngine())}, default="nope")
    (tmp_path / "bad.yaml").write_text("book: fraktur\n")
    with pytest.raises(ValueError, match="expected a mapping with 'routes'"):
        RoutingTable.from_yaml(tmp_path / "bad.yaml")
    # the command refuses before loading any model (a typo in the table costs no model load)
    cmd = [
        sys.executable,
        "-m",
        "deepsynth.cli.main",
        "serve",
        "--model",
        "print=rapidocr",
        "--routing",
        str(table),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "routing table names model(s) that are not served: 'book' -> 'fraktur'" in proc.stderr


def test_model_options_parse_names_and_bare_specs():
    from deepsynth.cli.serve import model_specs

    assert parse_model_option("fraktur=ppocr:runs/f/best") == ("fraktur", "ppocr:runs/f/best")
    assert parse_model_option("ppocr:runs/a=b") == (None, "ppocr:runs/a=b")
    assert model_specs(["rapidocr", "f=ppocr"]) == {"rapidocr": "rapidocr", "f": "ppocr"}
    assert model_specs(["ppocr:runs/x/best"], "fraktur") == {"fraktur": "ppocr:runs/x/best"}
    with pytest.raises(ValueError, match="given twice"):
        model_specs(["a=rapidocr", "a=ppocr"])
    with pytest.raises(ValueError, match="got 2 bare specs"):
        model_specs(["rapidocr", "ppocr"], "x")


def test_unload_waits_for_a_request_that_picked_the_model_before_queueing():
    """The window between choosing a model and queueing (decoding a PDF in a thread) is covered too."""
    import asyncio

    async def scenario() -> None:
        pool = ModelPool({"main": service("main", ColourEngine()), "b": service("b", ColourEngine())})
        await pool.start(warmup=False)
        with pool.lease("b") as chosen:
            unload = asyncio.create_task(pool.unload("b"))
            await asyncio.sleep(0.2)
            assert not unload.done() and pool.names == ["main"]  # new requests no longer find it
            (pred,) = await chosen.recognize_async([colour_image((1, 1, 1))])  # this one is still served
            assert pred.text == "#010101"
        assert await unload == "unloaded" and not chosen.ready
        await pool.aclose()

    asyncio.run(scenario())
