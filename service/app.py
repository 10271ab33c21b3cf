"""The FastAPI application: its parts, their start-up and shutdown, and its middleware."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import health, images, streams, viewer
from service.api.deps import ApiKeys, require_api_key
from service.config import Settings
from service.detection.batcher import Batcher
from service.detection.loading import load_detector
from service.detection.model import Detector
from service.logs import request_id_var
from service.masking import MaskSpec
from service.metrics import Metrics
from service.pipeline import FramePipeline
from service.selftest import detection_required, load_selftest_frame, run_selftest
from service.tracking import HoldConfig
from service.webrtc import SessionManager

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestMiddleware:
    """Give each request an id, time it by route template, and log one line when it ends."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]
        token = request_id_var.set(request_id)
        started_s = time.monotonic()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration_s = time.monotonic() - started_s
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.request_duration_seconds.labels(
                route=route, method=method, status=str(status)
            ).observe(duration_s)
            if route not in {"/metrics", "/healthz", "/readyz"}:
                logger.info("%s %s %d %.1f ms", method, route, status, duration_s * 1000)
            request_id_var.reset(token)


async def _start_model(app: FastAPI, injected: Detector | None) -> None:
    """Load, warm up and self-test the model; readiness turns on only when all of it passed."""
    state = app.state
    settings: Settings = state.settings
    try:
        detector = (
            injected if injected is not None else await asyncio.to_thread(load_detector, settings)
        )
        await asyncio.to_thread(detector.warmup)
        batcher = Batcher(
            detector,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_s,
            queue_limit=settings.queue_limit,
            metrics=state.metrics,
        )
        batcher.start()
        state.batcher = batcher
        info = detector.info
        pipeline = FramePipeline(
            batcher,
            floor_spec=MaskSpec(settings.mask_style, settings.mask_margin),
            deadline_s=settings.deadline_s,
            metrics=state.metrics,
            model_id=info.model_id,
        )
        pipeline.ready = True
        frame = await asyncio.to_thread(load_selftest_frame, settings.selftest_image)
        required = detection_required(settings, injected_detector=injected is not None)
        await run_selftest(pipeline, frame, require_detection=required)
    except Exception as exc:  # any start-up failure keeps the service alive but not ready
        state.startup_error = f"start-up failed: {exc}"
        logger.error("model start-up failed: %s", exc)
        return

    state.model_info = info.as_dict()
    state.metrics.model_info.info(
        {"name": info.name, "sha256": info.sha256, "backend": info.backend, "device": info.device}
    )
    state.pipeline = pipeline
    state.metrics.ready.set(1)
    logger.info("ready: model %s on %s (%s)", info.model_id, info.device, info.backend)


def create_app(
    settings: Settings | None = None,
    *,
    detector: Detector | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """Build the app; a `detector` passed in replaces the model file (tests inject faults so)."""
    settings = settings if settings is not None else Settings()
    metrics = metrics if metrics is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        startup = asyncio.create_task(_start_model(app, detector), name="sonomask-start-model")
        app.state.startup_task = startup
        app.state.sessions = SessionManager(
            lambda: app.state.pipeline, settings, metrics, app.state.hold_config
        )
        try:
            yield
        finally:
            startup.cancel()
            await app.state.sessions.close_all()
            app.state.metrics.ready.set(0)
            pipeline = app.state.pipeline
            if pipeline is not None:
                pipeline.ready = False
            batcher = app.state.batcher
            if batcher is not None:
                await asyncio.to_thread(batcher.stop)
            logger.info("stopped")

    app = FastAPI(
        title="sonomask",
        summary="Masks the fetal genital region in obstetric ultrasound images and video.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = ApiKeys(settings.all_api_keys())
    app.state.body_read_timeout_s = settings.body_timeout_s
    app.state.pipeline = None
    app.state.batcher = None
    app.state.startup_error = None
    app.state.model_info = None
    app.state.hold_config = HoldConfig.from_settings(settings)
    app.state.sessions = None

    protected: list[Any] = [Depends(require_api_key)]
    app.include_router(health.router)
    app.include_router(images.router, dependencies=protected)
    app.include_router(streams.router, dependencies=protected)
    app.include_router(viewer.router)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["Server-Timing", "X-Request-ID", "X-Sonomask-Decision"],
        )
    app.add_middleware(RequestMiddleware, metrics=metrics)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sonomask")
    except PackageNotFoundError:
        return "0.0.0"
