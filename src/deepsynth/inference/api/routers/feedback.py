"""``POST /v1/feedback``: the corrected text of a page the server read (or of an image sent along), stored as
labelled data for the improvement loop when the operator turned feedback on (docs/privacy.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import io

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from deepsynth.inference.api.bodies import read_json
from deepsynth.inference.api.openapi import ERRORS, request_body
from deepsynth.inference.api.protocol import ErrorResponse, FeedbackRequest, FeedbackResponse
from deepsynth.inference.api.state import ServerState, scoped
from deepsynth.inference.inputs import InputError, PageInput, decode_base64, decode_file
from deepsynth.inference.limits import RequestBudget
from deepsynth.inference.pdf import is_pdf
from deepsynth.observability.core import RequestContext
from deepsynth.observability.feedback import FeedbackStore, InputFile

router = APIRouter(tags=["feedback"])
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=FeedbackResponse,
    responses={
        **ERRORS,
        403: {"model": ErrorResponse, "description": "feedback is off on this server"},
        404: {"model": ErrorResponse, "description": "no kept input for this request id"},
    },
    openapi_extra=request_body({"application/json": FeedbackRequest}),
)
async def feedback(request: Request) -> Response:
    """Store a correction: ``request_id`` (+ ``page``) of an earlier request, or ``image``; ``text``, ``doc_type``."""
    return await scoped(request, "/v1/feedback", lambda state, ctx: _feedback(request, state, ctx))


async def _feedback(request: Request, state: ServerState, ctx: RequestContext) -> Response:
    store = state.feedback
    if store is None:
        raise InputError(
            403,
            "feedback_disabled",
            "this server does not store feedback (start it with --feedback-dir DIR or DEEPSYNTH_FEEDBACK_DIR)",
        )
    body = await read_json(request, FeedbackRequest)
    if (body.request_id is None) == (body.image is None):
        raise InputError(
            400,
            "invalid_request",
            "give either request_id (a request this server read) or image (the page itself), not "
            + ("both" if body.image is not None else "neither"),
            "request_id" if body.image is None else "image",
        )
    if body.image is not None:
        raw, mime = decode_base64(body.image if isinstance(body.image, str) else body.image.data, "image")
        file: InputFile = (raw, "image", mime)
        image, ext = await asyncio.to_thread(
            _page_of, file, body.page, RequestBudget(state.settings.limits), "image"
        )
        request_id = model = None
    else:
        file, dpi, request_id, model, page_in_file = await _kept(store, body.request_id, body.page)
        limits = dataclasses.replace(state.settings.limits, pdf_dpi=dpi) if dpi else state.settings.limits
        image, ext = await asyncio.to_thread(_page_of, file, page_in_file, RequestBudget(limits), "page")
    row = await asyncio.to_thread(
        store.add, body.text, body.doc_type, image, ext, request_id=request_id, page=body.page, model=model
    )
    state.service.obs.record_feedback(model, body.doc_type)
    answer = {
        "id": row["id"],
        "object": "feedback",
        "request_id": row["request_id"],
        "page": body.page,
        "doc_type": row["doc_type"],
        "chars": len(row["text"]),
        "created": row["created"],
    }
    return JSONResponse(answer, status_code=201)


async def _kept(
    store: FeedbackStore, request_id: str, page: int
) -> tuple[InputFile, float | None, str, str | None, int]:
    """The kept file holding ``page`` of ``request_id``, the request's dpi, id and model, and the page's
    number within that file."""
    kept = await asyncio.to_thread(store.find_input, request_id)
    if kept is None:
        hours = store.settings.keep_inputs_hours
        why = (
            f"inputs are kept for {hours:g} h, only of requests answered while feedback was on"
            if store.keeps_inputs
            else "this server keeps no inputs (DEEPSYNTH_FEEDBACK_KEEP_INPUTS_HOURS=0)"
        )
        raise InputError(
            404, "unknown_request", f"no kept input for request {request_id!r} ({why}); send image instead",
            "request_id",
        )  # fmt: skip
    if page > len(kept.pages):
        raise InputError(
            400,
            "invalid_request",
            f"page {page}: request {request_id!r} had {len(kept.pages)} page(s)",
            "page",
        )
    file_index, page_in_file = kept.pages[page - 1]
    return kept.files[file_index], kept.dpi, kept.request_id, kept.model, page_in_file


def _page_of(file: InputFile, page: int, budget: RequestBudget, param: str) -> tuple[bytes, str]:
    """The bytes and file extension of ``page`` of ``file``: a one-page image as sent, else the decoded page
    as PNG (a PDF page rendered at the request's dpi). Bad or oversized files are the decoder's 4xx."""
    data, name, mime = file
    try:
        pages: list[PageInput] = decode_file(data, name, mime, budget=budget)
    except InputError as exc:
        raise InputError(exc.status, exc.kind, str(exc), param) from exc
    if page > len(pages):
        raise InputError(400, "invalid_request", f"page {page}: the {param} has {len(pages)} page(s)", "page")
    if len(pages) == 1 and not is_pdf(data):
        with Image.open(io.BytesIO(data)) as img:
            ext = _EXTENSIONS.get(img.format or "")
        if ext is not None:
            return data, ext
    buf = io.BytesIO()
    pages[page - 1].image.save(buf, format="PNG")
    return buf.getvalue(), "png"
