"""ProcessEngine: the real tiny DeepSeek-OCR-2 in a child process, same answers as in-process, errors that
cross the process boundary, and a dead child that makes the service not ready."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from PIL import Image, ImageDraw

from deepsynth.inference.model_process import ModelProcessDied, ProcessEngine
from deepsynth.inference.service import ModelLoadError, OCRService, load_model
from deepsynth.models.generation import GenerationConfig
from deepsynth.observability import Observability

SPEC = "deepseek_ocr2:tiny"
GEN = GenerationConfig(max_new_tokens=6)


def _images(n: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        img = Image.new("RGB", (64 + 8 * i, 48), "white")
        ImageDraw.Draw(img).text((4, 16), f"ab {i}", fill="black")
        out.append(img)
    return out


@pytest.fixture(scope="module")
def engine():
    with ProcessEngine(SPEC, threads=1) as eng:
        yield eng


def test_child_process_reads_like_the_engine_in_process(engine):
    images = _images(3)
    remote = engine.recognize(images, GEN)
    local = load_model(SPEC).recognize(images, GEN)
    assert engine.pid != os.getpid() and engine.alive
    assert engine.name == load_model(SPEC).name
    assert [p.text for p in remote] == [p.text for p in local]
    assert [p.num_tokens for p in remote] == [p.num_tokens for p in local] == [6, 6, 6]
    assert [p.prompt_tokens for p in remote] == [p.prompt_tokens for p in local]  # usage crosses the pipe
    assert all(p.prompt_tokens > 0 for p in remote)
    assert all(p.finished is False for p in remote)
    assert engine.gpu_memory() == []  # reported with every reply; nothing on a CPU


def test_batches_sent_from_several_threads_come_back_to_their_callers(engine):
    from concurrent.futures import ThreadPoolExecutor

    batches = [_images(n) for n in (1, 2, 3, 4)]
    local = load_model(SPEC)
    expected = [[p.text for p in local.recognize(b, GEN)] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: [p.text for p in engine.recognize(b, GEN)], batches))
    assert got == expected


def test_metrics_show_the_model_process_cpu_and_memory(engine):
    from prometheus_client.parser import text_string_to_metric_families

    obs = Observability(SPEC)
    service = OCRService(engine, model_id=SPEC, obs=obs, owns_engine=False)
    assert service.engine is engine and service.batcher.max_inflight == 2  # a ServingEngine, pipelined
    fams = {f.name: f for f in text_string_to_metric_families(obs.exposition()[0].decode())}
    rss = fams["deepsynth_model_process_resident_memory_bytes"].samples[0].value
    own = fams["process_resident_memory_bytes"].samples[0].value
    assert rss > 50e6 and rss != own  # the child holds torch and the model; not this process's number
    assert fams["deepsynth_model_process_cpu_seconds"].samples[0].value > 0


def test_engine_error_comes_back_with_its_type(engine):
    bad = GenerationConfig(max_new_tokens=4, num_beams=0)
    with pytest.raises(Exception) as in_process:
        load_model(SPEC).recognize(_images(1), bad)
    with pytest.raises(Exception) as in_child:
        engine.recognize(_images(1), bad)
    assert type(in_child.value) is type(in_process.value)
    assert str(in_child.value) == str(in_process.value)
    assert len(engine.recognize(_images(2), GEN)) == 2  # the child survives a failed batch


def test_load_error_is_raised_in_the_parent(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        ProcessEngine(f"ppocr:{missing}")


def test_killed_child_fails_requests_clearly_and_server_is_not_ready():
    import httpx

    from deepsynth.inference.api import create_app
    from tests.serving_engines import data_uri, running_server

    engine = ProcessEngine(SPEC, threads=1)
    service = OCRService(
        engine, model_id=SPEC, owns_engine=True, generation=GEN, obs=Observability(SPEC, metrics=False)
    )
    body = {"images": [data_uri(_images(1)[0])]}
    with running_server(create_app(service)) as s:
        assert httpx.post(f"{s.url}/v1/ocr", json=body, timeout=60).status_code == 200
        os.kill(engine.pid, signal.SIGKILL)
        engine._proc.join(10)
        ready = httpx.get(f"{s.url}/readyz")
        assert ready.status_code == 503 and "model process has exited" in ready.json()["reason"]
        r = httpx.post(f"{s.url}/v1/ocr", json=body, timeout=60)
        assert r.status_code == 503 and "model process has exited" in r.json()["error"]["message"]
    with pytest.raises(ModelProcessDied, match="signal 9"):
        engine.recognize(_images(1), GEN)
    assert not engine._proc.is_alive()


def test_service_close_stops_the_child():
    async def scenario() -> int:
        service = OCRService(
            ProcessEngine(SPEC, threads=1),
            model_id=SPEC,
            owns_engine=True,
            generation=GEN,
            obs=Observability(SPEC, metrics=False),
        )
        await service.start()
        await service.recognize_async(_images(1))
        await service.aclose()
        return service.engine._proc.exitcode

    assert asyncio.run(scenario()) == 0
