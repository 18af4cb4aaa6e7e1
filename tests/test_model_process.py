"""ProcessEngine: the real tiny DeepSeek-OCR-2 in a child process, same answers as in-process, errors that
cross the process boundary, and a dead child that makes the service not ready."""

from __future__ import annotations

import asyncio
import os
import signal
import time

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


# -- budgets: the real embedded PP-OCRv6 recogniser on the 741-byte 65000x10 PNG (312000 px wide at
# height 48: minutes of model time and gigabytes if nothing stops it) --------------------------------------

THIN = Image.new("RGB", (65000, 10), "white")


@pytest.fixture(scope="module")
def ppocr_engine():
    with ProcessEngine("ppocr", threads=1, timeout_s=3.0, max_rss_mb=None) as eng:
        yield eng


def _pid_gone(pid: int, within_s: float = 10.0) -> bool:
    import psutil

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def _recognize_in_thread(engine, images):
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    fut = pool.submit(engine.recognize, images)
    pool.shutdown(wait=False)
    return fut


def test_time_budget_recycles_the_child_and_keeps_the_queue(ppocr_engine, shared_data):
    from deepsynth.evaluation.metrics import cer
    from deepsynth.inference.model_process import ModelBudgetExceeded
    from tests.serving_engines import fondue_lines

    ((line, truth),) = fondue_lines(shared_data, 1)
    old_pid = ppocr_engine.pid
    t0 = time.monotonic()
    hostile = _recognize_in_thread(ppocr_engine, [THIN])
    time.sleep(0.5)
    behind = _recognize_in_thread(ppocr_engine, [line])  # queued in the child behind the hostile batch
    with pytest.raises(ModelBudgetExceeded, match="model_timeout_s") as exc:
        hostile.result(60)
    assert exc.value.status == 504 and exc.value.kind == "model_timeout"
    assert time.monotonic() - t0 < 3.0 + 5.0  # answered at the budget, not after the respawn
    assert _pid_gone(old_pid)  # the work really stopped
    (pred,) = behind.result(120)  # sent again to the fresh child
    assert cer([truth], [pred.text]) < 0.05
    assert ppocr_engine.alive and ppocr_engine.pid != old_pid and len(ppocr_engine.recycles) == 1
    t0 = time.monotonic()
    assert ppocr_engine.recognize([line])[0].text == pred.text
    assert time.monotonic() - t0 < 15


def test_memory_ceiling_recycles_the_child(ppocr_engine, shared_data):
    from deepsynth.inference.model_process import ModelBudgetExceeded
    from tests.serving_engines import fondue_lines

    ((line, _),) = fondue_lines(shared_data, 1)
    ppocr_engine.recognize([line])
    old_pid, before = ppocr_engine.pid, ppocr_engine.rss()
    ppocr_engine.max_rss_bytes = before + 300 * 2**20
    ppocr_engine.timeout_s = 60.0
    try:
        with pytest.raises(ModelBudgetExceeded, match="model_max_rss_mb") as exc:
            ppocr_engine.recognize([THIN])
        assert exc.value.kind == "model_memory_exceeded"
        assert _pid_gone(old_pid)
        assert ppocr_engine.recognize([line])[0].text  # the fresh child serves the next batch
        assert ppocr_engine.rss() < before + 300 * 2**20
    finally:
        ppocr_engine.timeout_s, ppocr_engine.max_rss_bytes = 3.0, None


def test_memory_ceiling_defaults_to_three_times_the_loaded_size(ppocr_engine):
    with ProcessEngine("rapidocr", threads=1) as eng:
        loaded = eng.rss()
        assert eng.max_rss_bytes == max(3 * loaded, loaded + 2048 * 2**20)


def test_child_exits_when_its_parent_dies(tmp_path):
    """SIGKILL the parent (no chance to clean up): the model process notices and exits; never orphaned."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from deepsynth.inference.model_process import ProcessEngine\n"
        "if __name__ == '__main__':\n"
        "    eng = ProcessEngine('rapidocr', threads=1)\n"
        "    print(eng.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert _pid_gone(child, within_s=10)
    finally:
        if parent.poll() is None:
            parent.kill()
