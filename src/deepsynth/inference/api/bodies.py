"""Request bodies → validated protocol models → decoded pages.

JSON is parsed and validated in one step by pydantic (its parser gives up at nesting depth 200 in O(depth),
so a 100,000-deep body is a 400 and never a RecursionError); the body size was already bounded by the guard
middleware before anything here reads it.
"""

from __future__ import annotations

import asyncio
import io
from typing import TypeVar

from fastapi import Request
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepsynth.inference.api.errors import validation_error
from deepsynth.inference.api.protocol import FORM_FIELDS, OCRForm
from deepsynth.inference.inputs import InputError, PageInput, decode_file, is_pdf
from deepsynth.inference.limits import RequestBudget

M = TypeVar("M", bound=BaseModel)
FileItem = tuple[bytes, str, str | None]  # (bytes, name, declared content type)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, model: type[M]) -> M:
    """The body as ``model`` (415 unless it is application/json, 400 naming the field at fault)."""
    ctype = content_type(request)
    if ctype != "application/json":
        raise InputError(
            415, "unsupported_media_type", f"content type {ctype or '(none)'!r}; send application/json"
        )
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc) from exc


async def read_form(request: Request, max_files: int) -> tuple[OCRForm, list[FileItem]]:
    """A multipart body: every file part (whatever its field name) plus the :class:`OCRForm` text fields."""
    try:
        form = await request.form(max_files=max_files, max_fields=32)
    except InputError:
        raise
    except StarletteHTTPException as exc:
        raise InputError(
            400, "invalid_multipart", f"could not parse the multipart body: {exc.detail}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - python-multipart raises several types
        raise InputError(400, "invalid_multipart", f"could not parse the multipart body: {exc}") from exc
    try:
        files: list[FileItem] = []
        fields: dict[str, str] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((await value.read(), value.filename or key, value.content_type))
            elif key in FORM_FIELDS:
                fields[key] = value
            else:
                known = ", ".join(FORM_FIELDS)
                raise InputError(400, "invalid_request", f"unknown form field {key!r}; known: {known}", key)
    finally:
        await form.close()
    if not files:
        raise InputError(400, "no_input", "no image or PDF in the request")
    try:
        parsed = OCRForm.model_validate({"files": [data for data, _, _ in files], **_non_empty(fields)})
    except ValidationError as exc:
        raise validation_error(exc, form=True) from exc
    return parsed, files


def _non_empty(fields: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if v != ""}  # an empty form field means "not given"


# Small images are decoded on the event loop (well under a millisecond, less than the hand-off to a thread
# costs); bigger ones (by bytes or by the pixel count in their header) and every PDF go to a worker thread.
INLINE_DECODE_BYTES = 256 * 1024
INLINE_DECODE_PIXELS = 1_000_000


def _decode_inline(files: list[FileItem]) -> bool:
    if sum(len(data) for data, _, _ in files) > INLINE_DECODE_BYTES:
        return False
    pixels = 0
    for data, _, _ in files:
        if is_pdf(data):
            return False
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                pixels += img.width * img.height * getattr(img, "n_frames", 1)
        except Exception:  # noqa: BLE001 - not readable here: the thread path reports it properly
            return False
    return pixels <= INLINE_DECODE_PIXELS


async def decode_pages(files: list[FileItem], budget: RequestBudget) -> list[PageInput]:
    """Decode files into pages: small images inline, big ones and PDFs in a worker thread."""

    def work() -> list[PageInput]:
        pages: list[PageInput] = []
        for data, name, ctype in files:
            pages.extend(decode_file(data, name, ctype, budget=budget))
        return pages

    if not files:
        raise InputError(400, "no_input", "no image or PDF in the request")
    if _decode_inline(files):
        return work()
    return await asyncio.to_thread(work)
