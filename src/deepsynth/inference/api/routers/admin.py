"""Probes, metrics and model management: ``/healthz`` (the process answers), ``/readyz`` (every model is
ready), ``/metrics`` (every model's, one exposition), ``POST /admin/models`` (load / reload / unload a model
or a LoRA adapter while serving) and ``POST /admin/reload`` (follow the model registry's aliases now). The admin
routes need the server's bearer token; without one they are off."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from deepsynth.inference.api.bodies import read_json
from deepsynth.inference.api.errors import failure
from deepsynth.inference.api.openapi import ERRORS, request_body
from deepsynth.inference.api.protocol import (
    ErrorResponse,
    Health,
    ModelAction,
    ModelActionResult,
    Readiness,
    RegistryReloadResult,
)
from deepsynth.inference.api.state import ServerState, server_state
from deepsynth.inference.inputs import InputError
from deepsynth.inference.pool import ModelPool
from deepsynth.models.registry import ModelLoadError
from deepsynth.observability.metrics import merged_exposition

router = APIRouter(tags=["admin"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: ServerState = Depends(server_state)) -> JSONResponse:
    if state.ready:
        return JSONResponse({"status": "ready", "model": state.models.default, "models": state.models.names})
    return JSONResponse({"status": "not ready", "reason": state.not_ready_reason}, status_code=503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: ServerState = Depends(server_state)) -> Response:
    """Prometheus exposition of every served model (each sample labelled with its ``model``)."""
    registries = {}
    for name, entry in state.models.models.items():
        obs = entry.service.obs
        obs.record_queue_depth(entry.service.batcher.queue_depth)
        if obs.metrics is not None:
            registries[name] = obs.metrics.registry
    body, content_type = merged_exposition(registries)
    return Response(body, media_type=content_type)


@router.post(
    "/admin/models",
    response_model=ModelActionResult,
    responses={
        **ERRORS,
        403: {"model": ErrorResponse, "description": "model management is off (no --token)"},
        409: {"model": ErrorResponse, "description": "already served, or the default / a routed model"},
    },
    openapi_extra=request_body({"application/json": ModelAction}),
)
async def manage_models(request: Request) -> Response:
    """Load, reload or unload a model without restarting the server. The switch is immediate for new
    requests; the replaced (or unloaded) model first finishes every request that had already picked it."""
    state = server_state(request)
    try:
        _authorize(request, state)
        body = await read_json(request, ModelAction)
        pool, drain = state.models, state.settings.limits.drain_timeout_s
        warmup = state.settings.warmup
        if body.lora is not None or body.base is not None:
            done = await _manage_adapter(pool, body)
        elif body.action == "load":
            if body.spec is None:
                raise InputError(400, "invalid_request", "'load' needs a 'spec'", "spec")
            if body.name in pool.models:
                raise InputError(
                    409, "model_conflict", f"model {body.name!r} is already served; use 'reload'", "name"
                )
            done = await pool.load(body.name, body.spec, warmup=warmup, drain_timeout_s=drain)
        elif body.action == "reload":
            done = await pool.reload(body.name, body.spec, warmup=warmup, drain_timeout_s=drain)
        else:
            done = await pool.unload(body.name, drain_timeout_s=drain)
    except Exception as exc:  # noqa: BLE001 - answered in the API's one error shape
        if isinstance(exc, ModelLoadError):  # the spec did not load: the request is at fault
            exc = InputError(400, "model_load_error", str(exc), "lora" if body.lora else "spec")
        return failure(exc).response()
    return JSONResponse({"name": body.name, "status": done, "models": state.models.names})


async def _manage_adapter(pool: ModelPool, body: ModelAction) -> str:
    """Load or reload a LoRA adapter (``lora``: its directory) on ``base``."""
    if body.action == "unload" or body.spec is not None or (body.action == "load" and body.lora is None):
        raise InputError(
            400,
            "invalid_request",
            "'lora' and 'base' go with 'load' / 'reload' of an adapter, without 'spec'",
        )
    if body.action == "load" and body.name in pool.models:
        raise InputError(
            409, "model_conflict", f"model {body.name!r} is already served; use 'reload'", "name"
        )
    if body.action == "reload" and body.lora is None:
        return await pool.reload(body.name)
    return await pool.load_adapter(body.name, body.lora, base=body.base)  # type: ignore[arg-type]


@router.post(
    "/admin/reload",
    response_model=RegistryReloadResult,
    responses={
        **ERRORS,
        403: {"model": ErrorResponse, "description": "model management is off (no --token)"},
    },
)
async def reload_from_registry(request: Request) -> Response:
    """Check now whether the alias of every ``models:/NAME@ALIAS`` model has moved, and reload those that
    moved (the poll of ``--registry-poll`` does the same). Requests in flight finish on the old version."""
    state = server_state(request)
    try:
        _authorize(request, state)
        rows = await state.models.follow(
            retry=True, warmup=state.settings.warmup, drain_timeout_s=state.settings.limits.drain_timeout_s
        )
    except Exception as exc:  # noqa: BLE001 - answered in the API's one error shape
        return failure(exc).response()
    return JSONResponse({"models": rows})


def _authorize(request: Request, state: ServerState) -> None:
    token = state.settings.token
    if not token:
        raise InputError(
            403, "forbidden", "model management is off: start the server with --token to enable it"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        raise InputError(
            401, "unauthorized", "missing or wrong bearer token (send 'Authorization: Bearer <token>')"
        )
