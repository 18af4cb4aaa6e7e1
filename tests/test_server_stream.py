"""Real token streaming: the official openai SDK against a real server on loopback serving a tiny
random-weight DeepSeek-OCR-2, in the server's process and in a model process.

The tiny model never emits its end token within 200 tokens (checked below), so a generation that was
stopped early is visible in its token count, and a forward hook on the real model sees every decoding step.
"""

from __future__ import annotations

import threading
import time

import openai
import pytest
from PIL import Image

from deepsynth.inference.api import create_app
from deepsynth.inference.model_process import ProcessEngine
from deepsynth.inference.service import OCRService
from deepsynth.models.generation import GenerationConfig
from deepsynth.observability import Observability
from tests.serving_engines import data_uri, running_server

pytestmark = pytest.mark.slow

SPEC = "deepseek_ocr2:tiny"
MODEL = "ds-tiny"


def page(i: int = 0) -> Image.Image:
    img = Image.new("RGB", (96, 96), "white")
    img.paste((0, 0, 0), (10, 40 + i, 80, 50 + i))
    return img


def _messages(*images: Image.Image) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": data_uri(img)}} for img in images]
    return [{"role": "user", "content": content}]


class Steps:
    """A forward hook on the real model: counts decoding steps, remembers when the last one ended, and
    (when ``hold_at`` is set) holds that step until ``release`` is set."""

    def __init__(self, model, hold_at: int | None = None):
        self.calls = 0
        self.hold_at = hold_at
        self.release = threading.Event()
        self.released_in_time: bool | None = None
        self.last_step_end = 0.0
        self._handle = model.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        self.calls += 1
        if self.calls == self.hold_at:
            self.released_in_time = self.release.wait(30)
        self.last_step_end = time.monotonic()

    def remove(self) -> None:
        self._handle.remove()


def _server(engine, **kw):
    service = OCRService(
        engine,
        model_id=MODEL,
        generation=GenerationConfig(max_new_tokens=48),
        trim_repetition=False,  # a streamed answer is never trimmed; compare like with like
        max_wait_ms=5,
        obs=Observability(MODEL),
        **kw,
    )
    return service, running_server(create_app(service))


@pytest.fixture(scope="module")
def local_server():
    from deepsynth.testing.tiny_models import build_tiny

    engine = build_tiny("deepseek_ocr2")
    service, server = _server(engine)
    with server as s:
        s.service, s.model = service, engine.model
        yield s


def test_first_chunk_arrives_while_the_model_is_still_generating(local_server):
    client = openai.OpenAI(base_url=f"{local_server.url}/v1", api_key="x", max_retries=0)
    steps = Steps(local_server.model, hold_at=12)  # the 12th decoding step waits for the client's first text
    try:
        stream = client.chat.completions.create(
            model=MODEL, messages=_messages(page()), max_tokens=40, stream=True
        )
        pieces, first_text_at = [], None
        for chunk in stream:
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if piece and first_text_at is None:
                first_text_at = time.monotonic()
                steps.release.set()
            pieces.append(piece or "")
    finally:
        steps.release.set()
        steps.remove()
    assert steps.released_in_time is True  # text reached the client while step 12 of 40 was held
    assert first_text_at is not None and first_text_at < steps.last_step_end
    assert steps.calls == 40  # and the generation then ran to its end
    assert sum(1 for p in pieces if p) >= 2  # text came before the held step and after it

    whole = client.chat.completions.create(model=MODEL, messages=_messages(page()), max_tokens=40)
    assert "".join(pieces) == whole.choices[0].message.content != ""
    assert chunk.choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_a_client_that_goes_away_stops_the_generation(local_server):
    client = openai.OpenAI(base_url=f"{local_server.url}/v1", api_key="x", max_retries=0)
    steps = Steps(local_server.model)
    try:
        stream = client.chat.completions.create(
            model=MODEL, messages=_messages(page(1)), max_tokens=200, stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()  # the client disconnects after its first text
        # the next request runs once the model is free: it is not stuck behind 200 tokens
        client.chat.completions.create(model=MODEL, messages=_messages(page()), max_tokens=2)
    finally:
        steps.remove()
    assert steps.calls < 100  # the streamed generation stopped (it would take 200 steps), then 2 more


def test_several_images_stream_in_order_and_usage_matches_the_plain_answer(local_server):
    client = openai.OpenAI(base_url=f"{local_server.url}/v1", api_key="x", max_retries=0)
    msgs = _messages(page(0), page(2))
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and "\n\n" in text
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert whole.usage.completion_tokens == 24
    assert all(c.usage is None for c in chunks[:-1])


@pytest.fixture(scope="module")
def process_engine():
    with ProcessEngine(SPEC, threads=1) as engine:
        yield engine


def test_the_model_process_streams_pieces_over_the_pipe_and_stops_when_asked(process_engine):
    engine, gen = process_engine, GenerationConfig(max_new_tokens=200)
    assert engine.streams
    (whole,) = engine.recognize([page()], gen)
    assert whole.num_tokens == 200 and whole.finished is False  # no end token: a stop shows
    pieces: list[str] = []
    streamed = engine.recognize_stream(page(), GenerationConfig(max_new_tokens=30), pieces.append)
    assert len(pieces) > 5 and whole.text.startswith(streamed.text)
    assert streamed.text.startswith("".join(pieces))  # the caller sends the rest
    stopped = engine.recognize_stream(page(), gen, pieces.append, stop=lambda: len(pieces) > 0)
    assert stopped.num_tokens < 100 and stopped.finished is False
    # the child is free at once and answers the next batch
    assert engine.recognize([page()], GenerationConfig(max_new_tokens=3))[0].num_tokens == 3


def test_sdk_streams_from_a_model_process_like_the_plain_answer(process_engine):
    service, server = _server(process_engine, owns_engine=False)
    with server as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=_messages(page()),
                max_tokens=30,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        whole = client.chat.completions.create(model=MODEL, messages=_messages(page()), max_tokens=30)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) > 1
    assert "".join(contents) == whole.choices[0].message.content
    assert chunks[-1].usage == whole.usage and whole.usage.completion_tokens == 30
