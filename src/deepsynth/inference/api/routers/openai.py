"""The OpenAI-compatible surface: ``POST /v1/chat/completions`` (images as data: URIs only), ``GET /v1/models``.

``stream: true`` sends the text as the model generates it (generative VLMs: a piece per settled token, from
the model process); an engine that cannot stream (CTC recognisers, page engines) sends its text in one
chunk once the image is read. Errors before the first piece are HTTP errors; later ones are an ``error``
event (the openai SDK raises it).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deepsynth.inference.api.bodies import FileItem, decode_pages, read_json
from deepsynth.inference.api.errors import failure
from deepsynth.inference.api.openapi import ERRORS, request_body
from deepsynth.inference.api.protocol import ChatCompletionRequest, ChatCompletionResponse, ModelList
from deepsynth.inference.api.routers.common import keep_for_feedback, record, resolve_generation, timings
from deepsynth.inference.api.state import ServerState, scoped, server_state
from deepsynth.inference.inputs import InputError, decode_base64
from deepsynth.models.base import Prediction
from deepsynth.models.generation import UnsupportedGeneration
from deepsynth.observability.core import RequestContext

router = APIRouter(tags=["openai"])
SSE_EVENT = {  # one server-sent event of a streamed answer (``stream: true``)
    "type": "object",
    "properties": {
        "data": {"type": "string", "description": "a JSON chat.completion.chunk; the last event is [DONE]"}
    },
    "required": ["data"],
}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}},
    openapi_extra=request_body({"application/json": ChatCompletionRequest}),
)
async def chat_completions(request: Request) -> Response:
    """Read the images of the user messages; their text parts become the prompt (generative models)."""
    return await scoped(request, "/v1/chat/completions", lambda state, ctx: _chat(request, state, ctx))


async def _chat(request: Request, state: ServerState, ctx: RequestContext) -> Response:
    t0, obs = time.perf_counter(), state.service.obs  # the default model's until the request picks one
    try:
        body = await read_json(request, ChatCompletionRequest)
        doc_type = body.metadata.doc_type if body.metadata else None
        service = state.select(ctx, body.model, doc_type)  # 404 naming the served models for an unknown one
        obs = service.obs
        files, gen = _read_chat(body)
        pages = await decode_pages(files, state.settings.budget(service))
        gen = resolve_generation(service, gen)
    finally:
        obs.record_stage("preprocess", time.perf_counter() - t0)
    cid = f"chatcmpl-{ctx.request_id}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = service.stream_async([p.image for p in pages], gen)
        with _engine_refusals():  # errors before the first piece (queue full, a refused prompt): HTTP errors
            first = await anext(events)
        chunks = _Chunks(cid, int(time.time()), service.model_id, include_usage)

        def done(preds: list[Prediction]) -> dict[str, Any] | None:
            logprobs = _logprobs(preds, service.model_id) if body.logprobs else None
            record(obs, ctx, pages, preds, service.model_id, doc_type)
            keep_for_feedback(state.feedback, ctx, files, pages, service.model_id, doc_type)
            return logprobs

        return StreamingResponse(_stream(chunks, first, events, done), media_type="text/event-stream")
    with _engine_refusals():
        preds = await service.recognize_async([p.image for p in pages], gen)
    with obs.stage("postprocess"):
        text = "\n\n".join(p.text for p in preds)
        finish = finish_reason(preds)
        usage = usage_of(preds)
        logprobs = _logprobs(preds, service.model_id) if body.logprobs else None
        record(obs, ctx, pages, preds, service.model_id, doc_type)
        keep_for_feedback(state.feedback, ctx, files, pages, service.model_id, doc_type)
    return JSONResponse(
        {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": service.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            ],
            "usage": usage,
            "timings": timings(ctx),
        }
    )


@contextlib.contextmanager
def _engine_refusals() -> Iterator[None]:
    """A setting the engine refuses names the chat field it came from: the text parts of the messages for
    the prompt, ``logprobs`` / ``top_logprobs`` for log-probabilities."""
    try:
        yield
    except UnsupportedGeneration as exc:
        if exc.param in ("logprobs", "top_logprobs"):
            raise InputError(400, "unsupported_parameter", f"{exc.param}: {exc}", exc.param) from exc
        if exc.param != "prompt":
            raise
        raise InputError(
            400,
            "unsupported_generation",
            f"{exc} (the text parts of the user messages are the prompt)",
            "messages",
        ) from exc


def _logprobs(preds: list[Prediction], model: str) -> dict[str, Any]:
    """OpenAI's ``logprobs`` of a choice: every image's tokens in order (400 when the engine has none)."""
    if any(p.logprobs is None for p in preds):
        raise InputError(
            400,
            "unsupported_parameter",
            f"logprobs: model {model!r} does not return token log-probabilities (VLMs and CTC line "
            "recognisers do; page engines and Tesseract do not)",
            "logprobs",
        )

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = [
        {**entry(t.token, t.logprob), "top_logprobs": [entry(a, lp) for a, lp in t.top]}
        for p in preds
        for t in p.logprobs or []
    ]
    return {"content": content}


def finish_reason(preds: list[Prediction]) -> str:
    return "length" if any(p.finished is False for p in preds) else "stop"


def usage_of(preds: list[Prediction]) -> dict[str, int]:
    """OpenAI's usage from the engine's own counts (see Prediction: a CTC engine's token is a character)."""
    prompt = sum(p.prompt_tokens or 0 for p in preds)
    completion = sum(p.num_tokens or 0 for p in preds)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _read_chat(body: ChatCompletionRequest) -> tuple[list[FileItem], dict[str, Any]]:
    """The images of the user messages, and generation overrides (prompt, token limit, sampling)."""
    if body.top_logprobs is not None and not body.logprobs:
        raise InputError(
            400,
            "invalid_request",
            "top_logprobs: set logprobs to true to get log-probabilities",
            "top_logprobs",
        )
    files: list[FileItem] = []
    prompt_parts: list[str] = []
    for mi, msg in enumerate(body.messages):
        if msg.role != "user" or msg.content is None:
            continue
        if isinstance(msg.content, str):
            prompt_parts.append(msg.content)
            continue
        for pi, part in enumerate(msg.content):
            if part.type == "text":
                prompt_parts.append(part.text)
                continue
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            data, mime = decode_base64(url, f"messages[{mi}].content[{pi}].image_url.url")
            files.append((data, f"image {len(files) + 1}", mime))
    if not files:
        raise InputError(
            400, "no_input", "no image in the messages (send an image_url part with a data: URI)"
        )
    gen: dict[str, Any] = {}
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        gen["max_new_tokens"] = max_tokens
    if body.temperature:  # 0 or absent: greedy
        gen.update(do_sample=True, temperature=body.temperature)
    if body.top_p is not None:
        gen["top_p"] = body.top_p
    if body.logprobs:
        gen["top_logprobs"] = body.top_logprobs or 0
    prompt = "\n".join(p for p in prompt_parts if p.strip())
    if prompt:
        gen["prompt"] = prompt
    return files, gen


class _Chunks:
    """OpenAI's ``chat.completion.chunk`` events of one answer. With ``include_usage``
    (``stream_options.include_usage``) every chunk has ``usage: null`` and a last chunk with no choices
    carries it, as OpenAI sends it."""

    def __init__(self, cid: str, created: int, model: str, include_usage: bool):
        self.head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        self.include_usage = include_usage

    def event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {**self.head, "choices": choices, **extra}
        if self.include_usage:
            payload.setdefault("usage", None)
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def delta(self, content: dict[str, Any], finish_reason: str | None = None, **choice: Any) -> str:
        return self.event([{"index": 0, "delta": content, "finish_reason": finish_reason, **choice}])


async def _stream(
    chunks: _Chunks,
    first: tuple[int, str | Prediction],
    events: AsyncIterator[tuple[int, str | Prediction]],
    on_done: Callable[[list[Prediction]], dict[str, Any] | None],
) -> AsyncIterator[str]:
    """The SSE body: a role chunk, a content chunk per piece (images joined by a blank line like the
    non-streamed text), the finish reason (with every token's log-probabilities when asked: they are known
    once the answer is), the usage when asked, ``[DONE]``. A client that disconnects closes ``events``,
    which stops the generation."""
    yield chunks.delta({"role": "assistant", "content": ""})
    preds: list[Prediction] = []
    image = 0
    try:
        event: tuple[int, str | Prediction] | None = first
        while event is not None:
            i, item = event
            if i != image:  # the next image's answer starts
                image = i
                yield chunks.delta({"content": "\n\n"})
            if isinstance(item, Prediction):
                preds.append(item)
            else:
                yield chunks.delta({"content": item})
            event = await anext(events, None)
        logprobs = on_done(preds)
    except Exception as exc:  # noqa: BLE001 - the status line is sent: the error becomes an event
        err = failure(exc, unexpected="model_error")
        yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"
        return
    finally:
        await events.aclose()
    yield chunks.delta({}, finish_reason(preds), logprobs=logprobs)
    if chunks.include_usage:
        yield chunks.event([], usage=usage_of(preds))
    yield "data: [DONE]\n\n"


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def models(state: ServerState = Depends(server_state)) -> dict[str, Any]:
    """Every model this server serves (the default first), with the doc types routed to each."""
    pool = state.models
    names = [pool.default] + [n for n in pool.names if n != pool.default]
    cards = [
        {
            "id": name,
            "object": "model",
            "created": state.created,
            "owned_by": "deepsynth",
            "default": name == pool.default,
            "doc_types": sorted(t for t, m in pool.routing.routes.items() if m == name),
            "parent": pool.models[name].base,
            "limits": state.settings.limits.as_dict(),
            "registry": (src := pool.models[name].source) and src.as_dict(),
        }
        for name in names
    ]
    return {"object": "list", "data": cards}
