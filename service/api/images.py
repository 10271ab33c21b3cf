"""`POST /v1/mask` and `POST /v1/detect`: one image in, the masked image or its detections out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from service.api.deps import Upload, get_pipeline, get_settings, read_upload
from service.codecs import (
    DecodedImage,
    ImageFormat,
    ImageInputError,
    decode_image,
    encode_image,
    format_for_media_type,
    opaque_regions,
    png_has_only_pixel_chunks,
)
from service.config import MaskStyle, Settings
from service.dicom import DicomInputError, mask_instance
from service.masking import MaskSpec, expand_box_xyxy
from service.pipeline import FailureReason, FrameCheckFailedError, FrameOutcome, FramePipeline
from service.tracking import Decision, HoldConfig, Tracker

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["images"])

DICOM_MEDIA_TYPE = "application/dicom"

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            DICOM_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


class DetectionOut(BaseModel):
    class_id: int
    class_name: str
    confidence: float
    box_xyxy: list[float]


class TimingsOut(BaseModel):
    queue_ms: float
    inference_ms: float
    total_ms: float


class DetectResponse(BaseModel):
    model_id: str
    width: int
    height: int
    detections: list[DetectionOut]
    timings: TimingsOut


StyleQuery = Annotated[
    MaskStyle | None,
    Query(description="Mask style; the server's style is the minimum (solid > pixelate > blur)."),
]
MarginQuery = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=2.0,
        description="Margin around each box as a fraction of its side; "
        "the server's margin is the minimum.",
    ),
]
OnFailureQuery = Annotated[
    Literal["error", "blank"],
    Query(
        description="When the image cannot be checked: 'error' returns 503, 'blank' returns "
        "200 with a fully blanked image."
    ),
]


async def _decode(upload: Upload, settings: Settings) -> DecodedImage:
    try:
        image_format = format_for_media_type(upload.media_type)
        return await asyncio.to_thread(
            decode_image, upload.data, image_format, max_pixels=settings.max_pixels
        )
    except ImageInputError as exc:
        raise HTTPException(exc.status_code, detail=exc.message) from None


def _refuse(request: Request, outcome: FrameOutcome) -> HTTPException:
    reason = outcome.failure or FailureReason.DETECTOR_ERROR
    request.app.state.metrics.rejections_total.labels(reason=reason.value).inc()
    logger.warning("image not checked: %s (%s)", reason.value, outcome.failure_detail)
    return HTTPException(
        503,
        detail=f"the image could not be checked ({reason.value}): {outcome.failure_detail}; "
        "no image is returned. Retry, or pass on_failure=blank to receive a blanked image.",
        headers={"Retry-After": "1"},
    )


def _server_timing(outcome: FrameOutcome, total_s: float) -> str:
    return (
        f"queue;dur={outcome.queue_wait_s * 1000:.1f}, "
        f"inference;dur={outcome.inference_s * 1000:.1f}, total;dur={total_s * 1000:.1f}"
    )


def _render(decoded: DecodedImage, outcome: FrameOutcome) -> np.ndarray:
    """Render the image to send, masked in its own depth; RGBA masks are made opaque."""
    pixels = decoded.pixels
    if decoded.mode != "RGBA" or outcome.blanked:
        return outcome.render(pixels)
    colour = outcome.render(pixels[..., :3])
    out = np.dstack([colour, pixels[..., 3]])
    height, width = pixels.shape[:2]
    regions = [
        expand_box_xyxy(box, outcome.spec.margin, width, height) for box in outcome.boxes_xyxy
    ]
    opaque_regions(out, regions)
    return out


def _returns_upload_as_is(decoded: DecodedImage, outcome: FrameOutcome, data: bytes) -> bool:
    """True for a checked PNG with nothing to mask and no metadata: encoding it again is waste."""
    return (
        outcome.decision is Decision.CLEAR
        and decoded.format is ImageFormat.PNG
        and png_has_only_pixel_chunks(data)
    )


def _render_and_encode(decoded: DecodedImage, outcome: FrameOutcome) -> bytes:
    """Render and encode in one worker-thread call, which saves a thread hop per image."""
    pixels = _render(decoded, outcome)
    return encode_image(pixels, decoded.mode, decoded.format)


@router.post(
    "/mask",
    openapi_extra=IMAGE_BODY,
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": {}, "image/png": {}, DICOM_MEDIA_TYPE: {}},
            "description": "The same image, masked.",
        },
        503: {"description": "The image could not be checked; nothing is returned."},
    },
)
async def mask_image(
    request: Request,
    style: StyleQuery = None,
    margin: MarginQuery = None,
    on_failure: OnFailureQuery = "error",
    settings: Settings = Depends(get_settings),
    pipeline: FramePipeline = Depends(get_pipeline),
) -> Response:
    """Mask the genital region in a JPEG, PNG or DICOM image and return the same format."""
    received_s = time.monotonic()
    upload = await read_upload(request, settings.max_body_bytes)
    requested = MaskSpec(style or settings.mask_style, margin if margin is not None else 0.0)
    spec = pipeline.effective_spec(requested)

    if upload.media_type.split(";")[0].strip().lower() == DICOM_MEDIA_TYPE:
        return await _mask_dicom(request, upload, spec, on_failure, settings, pipeline)

    decoded = await _decode(upload, settings)
    outcome = await pipeline.run(decoded.bgr, spec=spec)
    if outcome.blanked and on_failure == "error":
        raise _refuse(request, outcome)

    if _returns_upload_as_is(decoded, outcome, upload.data):
        body = upload.data
    else:
        body = await asyncio.to_thread(_render_and_encode, decoded, outcome)
    pipeline.record("rest", outcome, received_s)

    headers = {
        "X-Sonomask-Decision": outcome.decision.value,
        "X-Sonomask-Detections": str(len(outcome.detections)),
        "X-Sonomask-Model": pipeline.model_id,
        "Server-Timing": _server_timing(outcome, time.monotonic() - received_s),
    }
    if outcome.blanked:
        headers["X-Sonomask-Blanked"] = (outcome.failure or FailureReason.DETECTOR_ERROR).value
    return Response(body, media_type=decoded.format.media_type, headers=headers)


async def _mask_dicom(
    request: Request,
    upload: Upload,
    spec: MaskSpec,
    on_failure: str,
    settings: Settings,
    pipeline: FramePipeline,
) -> Response:
    """Mask every frame of a DICOM instance and return the derived instance."""
    hold_config: HoldConfig = request.app.state.hold_config
    try:
        masked = await mask_instance(
            upload.data,
            pipeline,
            spec=spec,
            new_tracker=lambda: Tracker(hold_config),
            blank_on_failure=on_failure == "blank",
            settings=settings,
        )
    except DicomInputError as exc:
        # The messages name attributes and sizes, never header values.
        logger.info("DICOM instance rejected with %d: %s", exc.status_code, exc)
        raise HTTPException(exc.status_code, detail=str(exc)) from None
    except FrameCheckFailedError as exc:
        request.app.state.metrics.rejections_total.labels(reason=exc.reason.value).inc()
        logger.warning("DICOM instance not checked: %s (%s)", exc.reason.value, exc.detail)
        raise HTTPException(
            503,
            detail=f"the instance could not be checked ({exc.reason.value}): {exc.detail}; "
            "no instance is returned. Retry, or pass on_failure=blank to receive the "
            "instance with those frames blanked.",
            headers={"Retry-After": "1"},
        ) from None

    decisions = ",".join(f"{decision}={count}" for decision, count in masked.decisions.items())
    headers = {
        "X-Sonomask-Frames": str(masked.frames),
        "X-Sonomask-Decisions": decisions,
        "X-Sonomask-Model": pipeline.model_id,
        "X-Sonomask-Transfer-Syntax": masked.transfer_syntax_uid,
    }
    return Response(masked.data, media_type=DICOM_MEDIA_TYPE, headers=headers)


@router.post("/detect", openapi_extra=IMAGE_BODY, response_model=DetectResponse)
async def detect_image(
    request: Request,
    settings: Settings = Depends(get_settings),
    pipeline: FramePipeline = Depends(get_pipeline),
) -> DetectResponse:
    """Find the genital region in a JPEG or PNG image and return the boxes as JSON."""
    received_s = time.monotonic()
    upload = await read_upload(request, settings.max_body_bytes)
    decoded = await _decode(upload, settings)
    outcome = await pipeline.run(decoded.bgr)
    if outcome.blanked:
        raise _refuse(request, outcome)

    width, height = decoded.size_wh
    total_s = time.monotonic() - received_s
    return DetectResponse(
        model_id=pipeline.model_id,
        width=width,
        height=height,
        detections=[DetectionOut(**detection.as_dict()) for detection in outcome.detections],
        timings=TimingsOut(
            queue_ms=round(outcome.queue_wait_s * 1000, 2),
            inference_ms=round(outcome.inference_s * 1000, 2),
            total_ms=round(total_s * 1000, 2),
        ),
    )
