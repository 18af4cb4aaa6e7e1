"""A real (tiny, random-weight) DeepSeek-OCR-2 behind the server: batched generation, OpenAI chat, retries."""

from __future__ import annotations

import asyncio
import re

import httpx
import openai
import pytest
from PIL import Image

from deepsynth.inference.api import create_app
from deepsynth.inference.service import OCRService
from deepsynth.models.generation import GenerationConfig
from deepsynth.observability import Observability
from tests.serving_engines import data_uri, running_server

pytestmark = pytest.mark.slow


def page(i: int) -> Image.Image:
    img = Image.new("RGB", (96, 96), (255 - 20 * i, 255, 255))
    img.paste((0, 0, 0), (10, 40 + i, 80, 50 + i))
    return img


@pytest.fixture(scope="module")
def vlm_server():
    from deepsynth.testing.tiny_models import build_tiny

    engine = build_tiny("deepseek_ocr2")
    service = OCRService(
        engine,
        model_id="deepseek_ocr2-tiny",
        generation=GenerationConfig(max_new_tokens=8),
        max_batch_size=4,
        max_wait_ms=100,
        obs=Observability("deepseek_ocr2-tiny"),
    )
    with running_server(create_app(service)) as s:
        s.service = service
        yield s


def test_openai_chat_matches_direct_generation(vlm_server):
    client = openai.OpenAI(base_url=f"{vlm_server.url}/v1", api_key="x")
    resp = client.chat.completions.create(
        model="deepseek_ocr2-tiny",
        messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(page(0))}}]}
        ],
        max_tokens=8,
    )
    (direct,) = vlm_server.service.engine.recognize([page(0)], GenerationConfig(max_new_tokens=8))
    choice = resp.choices[0]
    assert choice.message.content == direct.text
    assert choice.finish_reason == ("length" if direct.finished is False else "stop")
    assert resp.usage.completion_tokens == direct.num_tokens <= 8


def test_concurrent_requests_batch_on_a_real_generative_model(vlm_server):
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{vlm_server.url}/v1", api_key="x")
        msgs = [
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(page(i))}}]}]
            for i in range(8)
        ]
        return await asyncio.gather(
            *(
                client.chat.completions.create(model="deepseek_ocr2-tiny", messages=m, max_tokens=8)
                for m in msgs
            )
        )

    results = asyncio.run(main())
    assert len(results) == 8 and all(r.usage.completion_tokens <= 8 for r in results)
    metrics = httpx.get(f"{vlm_server.url}/metrics").text
    count = float(re.search(r"deepsynth_batch_size_count\{[^}]*\} (\S+)", metrics).group(1))
    le1 = float(re.search(r'deepsynth_batch_size_bucket\{le="1\.0"[^}]*\} (\S+)', metrics).group(1))
    assert count - le1 >= 1  # at least one batch held more than one image
    assert "deepsynth_tokens_processed_total" in metrics


def test_truncated_outputs_are_retried_when_asked(vlm_server):
    img = {"images": [data_uri(page(3))], "generation": {"retry_truncated": 1, "max_new_tokens": 4}}
    (direct,) = vlm_server.service.engine.recognize([page(3)], GenerationConfig(max_new_tokens=4))
    r = httpx.post(f"{vlm_server.url}/v1/ocr", json=img, timeout=120)
    assert r.status_code == 200, r.text
    p = r.json()["pages"][0]
    if direct.finished is False:
        assert p["retries"] == 1
    else:
        assert p["retries"] == 0 and p["text"] == direct.text
