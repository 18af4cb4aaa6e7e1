"""DeepSynth's own OCR surface: ``POST /v1/ocr`` (multipart files or JSON base64; images and PDFs)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from deepsynth.inference.api.bodies import FileItem, content_type, decode_pages, read_form, read_json
from deepsynth.inference.api.openapi import ERRORS, request_body
from deepsynth.inference.api.protocol import OCRForm, OCRRequest, OCRResponse, overrides
from deepsynth.inference.api.routers.common import keep_for_feedback, record, resolve_generation, timings
from deepsynth.inference.api.state import ServerState, scoped
from deepsynth.inference.inputs import InputError, PageInput, decode_base64
from deepsynth.models.base import Prediction
from deepsynth.observability.core import RequestContext

router = APIRouter(tags=["ocr"])


@router.post(
    "/v1/ocr",
    response_model=OCRResponse,
    responses=ERRORS,
    openapi_extra=request_body({"multipart/form-data": OCRForm, "application/json": OCRRequest}),
)
async def ocr(request: Request) -> Response:
    """Read images and PDFs: one result per page, plus the text of all pages and stage timings."""
    return await scoped(request, "/v1/ocr", lambda state, ctx: _ocr(request, state, ctx))


async def _ocr(request: Request, state: ServerState, ctx: RequestContext) -> Response:
    t0, obs = time.perf_counter(), state.service.obs  # the default model's until the request picks one
    try:
        fields, files = await _read_request(request, state)
        service = state.select(ctx, fields.model, fields.doc_type)
        obs = service.obs
        pages = await decode_pages(files, state.settings.budget(service, fields.dpi))
        gen = resolve_generation(service, overrides(fields.generation))
    finally:
        obs.record_stage("preprocess", time.perf_counter() - t0)
    preds = await service.recognize_async([p.image for p in pages], gen)
    with obs.stage("postprocess"):
        out_pages = [_page_json(p, pred) for p, pred in zip(pages, preds, strict=True)]
        record(obs, ctx, pages, preds, service.model_id, fields.doc_type)
        keep_for_feedback(state.feedback, ctx, files, pages, service.model_id, fields.doc_type, fields.dpi)
    return JSONResponse(
        {
            "id": ctx.request_id,
            "object": "ocr.result",
            "model": service.model_id,
            "pages": out_pages,
            "text": "\n\n".join(p["text"] for p in out_pages),
            "timings": timings(ctx),
        }
    )


async def _read_request(request: Request, state: ServerState) -> tuple[OCRForm | OCRRequest, list[FileItem]]:
    """The request's fields (model, doc type, dpi, generation) and its files, from a multipart form or a
    JSON body; nothing is decoded yet (that needs the chosen model's page budget)."""
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        return await read_form(request, max_files=state.settings.limits.max_pages)
    if ctype == "application/json":
        body = await read_json(request, OCRRequest)
        files = []
        for i, item in enumerate(body.images):
            name, data = f"images[{i}]", item
            if not isinstance(item, str):
                name, data = item.name or name, item.data
            raw, mime = decode_base64(data, name)
            files.append((raw, name, mime))
        return body, files
    raise InputError(
        415,
        "unsupported_media_type",
        f"content type {ctype or '(none)'!r} is not accepted; send multipart/form-data files or application/json",
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _page_json(page: PageInput, pred: Prediction) -> dict[str, Any]:
    return {
        "source": page.source,
        "page": page.page,
        "width": page.image.width,
        "height": page.image.height,
        "text": pred.text,
        "confidence": _jsonable(pred.confidence),
        "finished": pred.finished,
        "num_tokens": pred.num_tokens,
        "lines": _jsonable(pred.lines),
        "repetition": bool(pred.meta.get("repetition", False)),
        "truncated": bool(pred.meta.get("truncated", False)),
        "retries": int(pred.meta.get("retries", 0)),
    }
