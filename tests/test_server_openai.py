"""OpenAI/vLLM semantics of /v1/chat/completions with the official SDK over real HTTP, on tiny real models."""

from __future__ import annotations

import math

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


def page() -> Image.Image:
    img = Image.new("RGB", (96, 96), "white")
    img.paste((0, 0, 0), (10, 40, 80, 50))
    return img


@pytest.fixture(scope="module")
def got_server():
    from deepsynth.testing.tiny_models import build_tiny

    service = OCRService(
        build_tiny("got_ocr2"),
        model_id="got-tiny",
        generation=GenerationConfig(max_new_tokens=4),
        max_wait_ms=5,
        obs=Observability("got-tiny"),
    )
    with running_server(create_app(service)) as s:
        s.service = service
        yield s


def _messages(text: str | None = None) -> list[dict]:
    content: list[dict] = [{"type": "image_url", "image_url": {"url": data_uri(page())}}]
    if text is not None:
        content.insert(0, {"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def test_free_text_prompt_to_got_ocr2_is_a_400_naming_the_allowed_prompts(got_server):
    requests: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [requests.append]})
    client = openai.OpenAI(base_url=f"{got_server.url}/v1", api_key="x", http_client=http)  # retries on
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="got-tiny", messages=_messages("Describe this picture."), max_tokens=4
        )
    assert len(requests) == 1  # a 400: the SDK does not retry it
    body = err.value.body
    assert body["type"] == "unsupported_generation" and body["param"] == "messages"
    assert "'Describe this picture.'" in body["message"]
    assert all(p in body["message"] for p in ("ocr", "format"))
    # one of the allowed prompts works
    ok = client.chat.completions.create(model="got-tiny", messages=_messages("format"), max_tokens=4)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_free_text_prompt_on_v1_ocr_names_the_generation_field(got_server):
    body = {"images": [data_uri(page())], "generation": {"prompt": "Describe this", "max_new_tokens": 4}}
    r = httpx.post(f"{got_server.url}/v1/ocr", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "generation.prompt"
    assert "choose one of ocr" in r.json()["error"]["message"]


def test_unsupported_generation_crosses_the_model_process_pipe_intact():
    import pickle

    from deepsynth.inference.model_process import _portable
    from deepsynth.models.generation import UnsupportedGeneration

    exc = pickle.loads(pickle.dumps(_portable(UnsupportedGeneration("prompts are fixed", "prompt"))))
    assert type(exc) is UnsupportedGeneration and exc.param == "prompt" and str(exc) == "prompts are fixed"


def test_usage_counts_image_and_prompt_tokens_in_and_generated_tokens_out(got_server):
    client = openai.OpenAI(base_url=f"{got_server.url}/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(model="got-tiny", messages=_messages(), max_tokens=4)
    (direct,) = got_server.service.engine.recognize([page()], GenerationConfig(max_new_tokens=4))
    image_tokens = got_server.service.engine.engine.num_image_tokens
    assert r.usage.prompt_tokens == direct.prompt_tokens > image_tokens  # the image's tokens and GOT's prompt
    assert r.usage.completion_tokens == direct.num_tokens <= 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    # stream_options.include_usage: every chunk has usage null, a last chunk without choices carries it
    chunks = list(
        client.chat.completions.create(
            model="got-tiny",
            messages=_messages(),
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices == [] and chunks[-1].usage == r.usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == r.choices[0].message.content
    plain = list(
        client.chat.completions.create(model="got-tiny", messages=_messages(), max_tokens=4, stream=True)
    )
    assert all(c.usage is None and c.choices for c in plain)


def test_usage_of_a_ctc_recogniser_counts_characters(shared_data):
    from tests.serving_engines import fondue_lines

    ((img, _),) = fondue_lines(shared_data, 1)
    service = OCRService("ppocr", model_id="ppocr", max_wait_ms=5, obs=Observability("ppocr"))
    with running_server(create_app(service)) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0)
        content = [{"type": "image_url", "image_url": {"url": data_uri(img)}}]
        r = client.chat.completions.create(model="ppocr", messages=[{"role": "user", "content": content}])
        lp = client.chat.completions.create(
            model="ppocr", messages=[{"role": "user", "content": content}], logprobs=True
        )
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="ppocr", messages=[{"role": "user", "content": content}], logprobs=True, top_logprobs=2
            )
        streamed = list(
            client.chat.completions.create(
                model="ppocr", messages=[{"role": "user", "content": content}], stream=True
            )
        )
    text = r.choices[0].message.content
    assert len(text) > 20
    # a CTC recogniser cannot stream: its text comes in one chunk once the line is read
    pieces = [c.choices[0].delta.content for c in streamed if c.choices[0].delta.content]
    assert pieces == [text] and streamed[-1].choices[0].finish_reason == "stop"
    # a CTC recogniser's tokens are its characters, each with the probability of the frame that emitted it
    chars = lp.choices[0].logprobs.content
    assert "".join(c.token for c in chars) == text and all(c.logprob <= 0 for c in chars)
    assert all(c.top_logprobs == [] for c in chars)
    assert err.value.body["param"] == "top_logprobs" and "alternative" in err.value.body["message"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        0,
        len(text),
        len(text),
    )


def test_logprobs_are_the_models_own_with_real_alternatives(got_server):
    client = openai.OpenAI(base_url=f"{got_server.url}/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(
        model="got-tiny", messages=_messages(), max_tokens=4, logprobs=True, top_logprobs=3
    )
    (direct,) = got_server.service.engine.recognize(
        [page()], GenerationConfig(max_new_tokens=4, top_logprobs=3)
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == len(direct.logprobs) > 0
    for got, want in zip(content, direct.logprobs, strict=True):
        assert (got.token, got.logprob) == (want.token, pytest.approx(want.logprob))
        assert got.logprob <= 0 and got.bytes == list(got.token.encode())
        alts = got.top_logprobs
        assert len(alts) == 3 and [a.logprob for a in alts] == sorted((a.logprob for a in alts), reverse=True)
        # greedy decoding: the token is the most likely one of its step
        assert alts[0].token == got.token and alts[0].logprob == pytest.approx(got.logprob)
    # confidence is exp(mean log-probability) over the same tokens (plus the end token when one came)
    if direct.finished is False:
        mean = sum(t.logprob for t in content) / len(content)
        assert direct.confidence == pytest.approx(math.exp(mean), rel=1e-4)

    plain = client.chat.completions.create(model="got-tiny", messages=_messages(), max_tokens=4)
    assert plain.choices[0].logprobs is None
    # streamed: the finishing chunk carries every token's log-probabilities
    chunks = list(
        client.chat.completions.create(
            model="got-tiny", messages=_messages(), max_tokens=4, logprobs=True, stream=True
        )
    )
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert [t.logprob for t in last.choices[0].logprobs.content] == pytest.approx(
        [t.logprob for t in content]
    )


def test_top_logprobs_without_logprobs_is_a_400_naming_it(got_server):
    client = openai.OpenAI(base_url=f"{got_server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="got-tiny", messages=_messages(), max_tokens=2, top_logprobs=2)
    assert err.value.body["param"] == "top_logprobs"


def test_engines_without_token_probabilities_answer_logprobs_with_a_400():
    from tests.serving_engines import ColourEngine

    service = OCRService(ColourEngine(), model_id="colour", max_wait_ms=5, obs=Observability("colour"))
    with running_server(create_app(service)) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="colour", messages=_messages(), logprobs=True)
    assert err.value.body["param"] == "logprobs" and err.value.body["type"] == "unsupported_parameter"
    assert "does not return token log-probabilities" in err.value.body["message"]
