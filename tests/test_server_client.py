"""deepsynth.inference.client (registry "server"): a served model used as an OCREngine, both protocols;
and the real RapidOCR (PP-OCRv6) recogniser served end to end."""

from __future__ import annotations

import pytest

from deepsynth.evaluation.metrics import cer
from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.client import RemoteEngine, RemoteError, generation_overrides
from deepsynth.inference.service import OCRService
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.registry import load_engine
from deepsynth.observability import Observability
from tests.serving_engines import ColourEngine, colour_image, fondue_lines, running_server


@pytest.fixture(scope="module")
def colour_server():
    engine = ColourEngine()
    app = create_app(OCRService(engine, obs=Observability("colour")), ServerSettings(token="tok"))
    with running_server(app) as s:
        s.engine = engine
        yield s


def test_registry_spec_detects_deepsynth_protocol_and_batches_in_one_request(colour_server):
    engine = load_engine(f"server:{colour_server.url}", token="tok")
    preds = engine.recognize(
        [colour_image((1, 2, 3)), colour_image((4, 5, 6))], GenerationConfig(max_new_tokens=7)
    )
    assert engine.protocol == "deepsynth" and engine.model == "colour"
    assert [p.text for p in preds] == ["#010203", "#040506"]
    assert preds[0].meta["request_id"] == preds[1].meta["request_id"]  # one request carried both
    assert colour_server.engine.generations[-1].max_new_tokens == 7  # overrides travel to the server


def test_openai_protocol_against_the_chat_endpoint(colour_server):
    engine = RemoteEngine(f"{colour_server.url}/v1/chat/completions", token="tok")
    preds = engine.recognize([colour_image((9, 9, 9)), colour_image((8, 8, 8)), colour_image((7, 7, 7))])
    assert engine.protocol == "openai"
    assert [p.text for p in preds] == ["#090909", "#080808", "#070707"]
    assert all(p.finished for p in preds)


def test_errors_are_clear(colour_server):
    with pytest.raises(RemoteError, match="401: missing or wrong bearer token"):
        RemoteEngine(colour_server.url, token="wrong").recognize([colour_image((1, 1, 1))])
    with pytest.raises(RemoteError, match="cannot reach http://127.0.0.1:9"):
        RemoteEngine("http://127.0.0.1:9", timeout_s=2).recognize([colour_image((1, 1, 1))])
    with pytest.raises(ValueError, match="http:// or https://"):
        RemoteEngine("ftp://x")
    assert generation_overrides(GenerationConfig()) == {}
    assert generation_overrides(GenerationConfig(num_beams=3)) == {"num_beams": 3}


def test_real_rapidocr_served_end_to_end(shared_data):
    lines = fondue_lines(shared_data, 6)
    service = OCRService("rapidocr", max_batch_size=4, max_wait_ms=20, obs=Observability("rapidocr"))
    with running_server(create_app(service)) as s:
        remote = load_engine(f"server:{s.url}")
        preds = remote.recognize([img for img, _ in lines])
        via_chat = RemoteEngine(s.url, protocol="openai", model="rapidocr").recognize([lines[0][0]])
    refs = [text for _, text in lines]
    hyps = [p.text for p in preds]
    assert cer(refs, hyps) < 0.05, list(zip(refs, hyps, strict=True))
    assert via_chat[0].text == hyps[0]
    direct = service.engine.recognize([img for img, _ in lines])
    assert hyps == [p.text for p in direct]  # serving changes nothing about what the model reads
