"""One error shape for the whole API and the table that maps exceptions onto it.

Every error body is ``{"error": {"message", "type", "code", "param"}}`` (OpenAI's shape, as vLLM answers):
``type`` is a stable machine-readable kind, ``code`` the HTTP status, ``param`` the field or file at fault.

========================================  ======  ===========================
exception                                 status  type
========================================  ======  ===========================
InputError (a bad file or field)          4xx     its own kind
UnsupportedGeneration (engine refuses)    400     unsupported_generation
LimitExceeded (a model budget)            504/413 model_timeout / model_memory_exceeded
pydantic ValidationError                  400     invalid_request / ...
QueueFull                                 429     queue_full (Retry-After)
ShuttingDown (drain time over, or new)    503     shutting_down (Retry-After)
not ready, BatcherClosed, dead model      503     unavailable (Retry-After)
TimeoutError                              504     timeout
HTTPException (404, 405 + Allow, ...)     its     not_found / method_not_allowed
anything else                             500     model_error (in a route) / internal_error
cancelled by the server's shutdown        503     shutting_down (middleware)
========================================  ======  ===========================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepsynth.inference.api.protocol import field_path
from deepsynth.inference.batcher import BatcherClosed, QueueFull, ShuttingDown
from deepsynth.inference.inputs import InputError
from deepsynth.inference.limits import LimitExceeded
from deepsynth.inference.model_process import ModelProcessDied
from deepsynth.models.generation import UnsupportedGeneration

log = logging.getLogger("deepsynth.server")

_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}


class Unavailable(RuntimeError):
    """The service cannot take requests now (loading, failed to start, shutting down)."""


@dataclass
class Failure:
    """An error answer: status, stable kind, message, the field at fault and extra headers."""

    status: int
    kind: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        return {
            "error": {"message": self.message, "type": self.kind, "code": self.status, "param": self.param}
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)


def error_response(
    status: int, kind: str, message: str, param: str | None = None, **headers: str
) -> JSONResponse:
    return Failure(status, kind, message, param, headers).response()


def failure(exc: BaseException, *, unexpected: str = "internal_error") -> Failure:
    """The answer for ``exc``; ``unexpected`` is the kind of an exception the table does not know."""
    if isinstance(exc, ValidationError | RequestValidationError):
        exc = validation_error(exc)
    if isinstance(exc, InputError):
        return Failure(exc.status, exc.kind, str(exc), exc.param)
    if isinstance(exc, UnsupportedGeneration):  # never a 500: clients (the openai SDK) retry those
        return Failure(400, "unsupported_generation", str(exc), f"generation.{exc.param}")
    if isinstance(exc, LimitExceeded):  # a model budget: the model process was recycled
        return Failure(exc.status, exc.kind, str(exc), exc.limit)
    if isinstance(exc, QueueFull):
        return Failure(429, "queue_full", str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, ShuttingDown):
        return Failure(503, "shutting_down", str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, BatcherClosed | Unavailable | ModelProcessDied):
        return Failure(503, "unavailable", str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, TimeoutError):
        return Failure(504, "timeout", str(exc) or "the model did not answer in time")
    if isinstance(exc, StarletteHTTPException):
        kind = _HTTP_KINDS.get(exc.status_code, "http_error")
        return Failure(exc.status_code, kind, str(exc.detail), headers=dict(exc.headers or {}))
    if unexpected == "model_error":
        return Failure(500, unexpected, f"the model failed on this input: {type(exc).__name__}: {exc}")
    return Failure(500, unexpected, f"internal error: {type(exc).__name__}")


def validation_error(exc: ValidationError | RequestValidationError, *, form: bool = False) -> InputError:
    """A 400 naming the first field at fault (its kind: invalid_json, no_input, invalid_generation or
    invalid_request)."""
    errors = exc.errors()
    # the deepest location is the most specific (a union reports one error per member it tried)
    first = max(errors, key=lambda e: len(e["loc"])) if errors else {"type": "", "loc": (), "msg": str(exc)}
    etype, loc = first["type"], tuple(first.get("loc", ()))
    if loc and loc[0] in {"body", "query", "path"} and isinstance(exc, RequestValidationError):
        loc = loc[1:]
    if etype == "json_invalid" and not loc:
        return InputError(400, "invalid_json", f"request body is not valid JSON ({first['msg']})")
    if etype == "model_type" and not loc:
        return InputError(400, "invalid_json", "request body must be a JSON object")
    param = field_path(loc, unknown_last=etype == "extra_forbidden") or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if etype == "extra_forbidden":
        message = f"unknown {'form ' if form else ''}field {param!r}{more}"
    else:
        message = f"{param or 'body'}: {first['msg']}{more}"
    if loc and loc[0] == "generation":
        kind = "invalid_generation"
    elif loc in {("images",), ("files",)} and etype in {"missing", "too_short"}:
        kind = "no_input"
    else:
        kind = "invalid_request"
    return InputError(400, kind, message, param)


def install_exception_handlers(app: FastAPI) -> None:
    """Errors raised outside a route's own scope (routing, middleware, shutdown) get the same JSON shape."""

    async def known(request: Request, exc: Exception) -> JSONResponse:
        return failure(exc).response()

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return failure(exc).response()

    for exc_type in (StarletteHTTPException, RequestValidationError, InputError):
        app.add_exception_handler(exc_type, known)
    app.add_exception_handler(Exception, unexpected)
