"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import require_api_key

router = APIRouter(tags=["health"])

# A model call running longer than this marks the instance not ready: it is stalled.
STALLED_BATCH_S = 30.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process serves HTTP. Says nothing about the model."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready: the model is loaded, its self-test passed and the batcher is not stalled."""
    state = request.app.state
    pipeline = state.pipeline
    if pipeline is None or not pipeline.ready:
        detail = state.startup_error or "the model is loading"
        return JSONResponse({"status": "not ready", "detail": detail}, status_code=503)
    busy_s = pipeline.batcher.busy_for_s()
    if busy_s > STALLED_BATCH_S:
        detail = f"the detector has been running one batch for {busy_s:.0f} s"
        return JSONResponse({"status": "not ready", "detail": detail}, status_code=503)
    return JSONResponse({"status": "ready", "model": state.model_info})


async def _metrics_guard(request: Request) -> None:
    if request.app.state.settings.protect_metrics:
        await require_api_key(request)


@router.get("/metrics", dependencies=[Depends(_metrics_guard)])
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this instance's metrics."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
