"""Probes and metrics: ``/healthz`` (the process answers), ``/readyz`` (the model is ready), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from deepsynth.inference.api.protocol import Health, Readiness
from deepsynth.inference.api.state import ServerState, server_state

router = APIRouter(tags=["admin"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: ServerState = Depends(server_state)) -> JSONResponse:
    if state.service.ready:
        return JSONResponse({"status": "ready", "model": state.service.model_id})
    return JSONResponse({"status": "not ready", "reason": state.not_ready_reason}, status_code=503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: ServerState = Depends(server_state)) -> Response:
    """Prometheus exposition."""
    obs = state.service.obs
    obs.record_queue_depth(state.service.batcher.queue_depth)
    body, content_type = obs.exposition()
    return Response(body, media_type=content_type)
