"""OpenAPI declarations for bodies the routes parse themselves (one path takes JSON or multipart)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from deepsynth.inference.api.protocol import ErrorResponse

REF = "#/components/schemas/{model}"
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why}
    for status, why in {
        400: "bad field, file or JSON",
        401: "missing or wrong bearer token",
        404: "unknown model",
        413: "too large (upload, image or pages)",
        415: "unsupported content type",
        429: "queue full (Retry-After)",
        503: "not ready or model process gone (Retry-After)",
        504: "timed out",
    }.items()
}
_BODIES: dict[str, type[BaseModel]] = {}  # models referenced by request_body(), added to the components


def request_body(content: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """``openapi_extra`` declaring a required request body with one model per media type."""
    for model in content.values():
        _BODIES[model.__name__] = model
    schemas = {media: {"schema": {"$ref": REF.format(model=m.__name__)}} for media, m in content.items()}
    return {"requestBody": {"required": True, "content": schemas}}


def install_openapi(app: FastAPI) -> None:
    """FastAPI's schema plus the request-body models (and the models they use) as components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in _BODIES.items():
                body = model.model_json_schema(ref_template=REF)
                components.update(body.pop("$defs", {}))
                components[name] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
