"""The path every frame takes: detect through the shared batcher, decide, then mask or blank.

REST images, stream frames, DICOM frames and the command line all call `FramePipeline.run`.
It never raises for a detector problem: a frame that could not be checked in time comes
back as a `blanked` outcome with a `failure` reason, and `FrameOutcome.render` turns it
into a black frame with a notice. Formats call `render` on their own pixel arrays, so a
16-bit or palette image is masked in its own depth.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from service.detection.batcher import Batcher, BatcherError
from service.detection.model import Detection
from service.masking import BoxXYXY, MaskSpec, blank_frame, clip_box_xyxy, mask_boxes
from service.metrics import Metrics
from service.tracking import Decision, TrackStep

logger = logging.getLogger(__name__)

# A detector that reports more regions than this on one frame is treated as broken.
MAX_DETECTIONS_PER_FRAME = 1000


class FailureReason(StrEnum):
    """Reason a frame could not be checked; also the `reason` label of rejections."""

    NOT_READY = "not_ready"
    QUEUE_FULL = "queue_full"
    DEADLINE = "deadline"
    DETECTOR_ERROR = "detector_error"
    INVALID_OUTPUT = "invalid_output"


class FrameCheckFailedError(RuntimeError):
    """A frame could not be checked and the caller asked for an error rather than a blank."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class FrameTracker(Protocol):
    """Per-stream state that may hold a mask through frames the detector missed."""

    def update(
        self, frame_bgr: np.ndarray, boxes_xyxy: Sequence[BoxXYXY], now_s: float
    ) -> TrackStep: ...

    def mark_blanked(self) -> None: ...


@dataclass(frozen=True)
class FrameOutcome:
    """The decision on one frame, what to mask, and where the time went."""

    decision: Decision
    spec: MaskSpec
    detections: tuple[Detection, ...] = ()
    boxes_xyxy: tuple[BoxXYXY, ...] = ()
    mask_age_frames: int = 0
    failure: FailureReason | None = None
    failure_detail: str = ""
    queue_wait_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def blanked(self) -> bool:
        return self.decision is Decision.BLANKED

    def render(self, image: np.ndarray, *, fill_value: float = 0) -> np.ndarray:
        """Return the frame to send: blanked, masked, or (decision `clear`) the image itself."""
        if self.decision is Decision.BLANKED:
            return blank_frame(image)
        if not self.boxes_xyxy:
            return image
        return mask_boxes(image, self.boxes_xyxy, self.spec, fill_value=fill_value)


class FramePipeline:
    """Detection, tracking and masking decisions for frames from every source."""

    def __init__(
        self,
        batcher: Batcher,
        *,
        floor_spec: MaskSpec,
        deadline_s: float,
        metrics: Metrics,
        model_id: str,
    ) -> None:
        self.batcher = batcher
        self.floor_spec = floor_spec
        self.deadline_s = deadline_s
        self.metrics = metrics
        self.model_id = model_id
        self.ready = False

    def effective_spec(self, requested: MaskSpec | None) -> MaskSpec:
        """Raise the requested spec to the server's floor: callers may ask for more, never less."""
        return self.floor_spec if requested is None else requested.at_least(self.floor_spec)

    async def run(
        self,
        frame_bgr: np.ndarray,
        *,
        spec: MaskSpec | None = None,
        tracker: FrameTracker | None = None,
        deadline_s: float | None = None,
    ) -> FrameOutcome:
        """Check one BGR uint8 frame; `deadline_s` is a `time.monotonic()` instant."""
        started_s = time.monotonic()
        spec = self.effective_spec(spec)
        if deadline_s is None:
            deadline_s = started_s + self.deadline_s

        if not self.ready:
            return self._failed(spec, FailureReason.NOT_READY, "the model is not ready", tracker)
        try:
            result = await self.batcher.detect(frame_bgr, deadline_s=deadline_s)
        except BatcherError as exc:
            return self._failed(spec, FailureReason(exc.reason), str(exc), tracker)

        height, width = frame_bgr.shape[:2]
        boxes = _valid_boxes(result.detections, width, height)
        if boxes is None:
            self.metrics.detector_errors_total.inc()
            detail = "the detector returned invalid boxes"
            return self._failed(spec, FailureReason.INVALID_OUTPUT, detail, tracker)

        if tracker is None:
            decision = Decision.MASKED if boxes else Decision.CLEAR
            step = TrackStep(decision, tuple(boxes))
        else:
            step = tracker.update(frame_bgr, boxes, time.monotonic())
            if step.decision is Decision.HELD:
                self.metrics.mask_age_frames.observe(step.mask_age_frames)

        return FrameOutcome(
            decision=step.decision,
            spec=spec,
            detections=tuple(result.detections),
            boxes_xyxy=step.boxes_xyxy,
            mask_age_frames=step.mask_age_frames,
            queue_wait_s=result.queue_wait_s,
            inference_s=result.inference_s,
            total_s=time.monotonic() - started_s,
        )

    def record(self, source: str, outcome: FrameOutcome, received_s: float) -> None:
        """Count one frame that left the service, once it is on its way out."""
        self.metrics.frames_total.labels(source=source, decision=outcome.decision.value).inc()
        self.metrics.end_to_end_seconds.labels(source=source).observe(time.monotonic() - received_s)

    def _failed(
        self,
        spec: MaskSpec,
        reason: FailureReason,
        detail: str,
        tracker: FrameTracker | None,
    ) -> FrameOutcome:
        if tracker is not None:
            tracker.mark_blanked()
        return FrameOutcome(
            decision=Decision.BLANKED, spec=spec, failure=reason, failure_detail=detail
        )


def _valid_boxes(detections: Sequence[Detection], width: int, height: int) -> list[BoxXYXY] | None:
    """Clip boxes to the frame; None when the detector's output cannot be trusted.

    A non-numeric or non-finite coordinate or confidence, or an absurd number of boxes,
    makes the whole frame untrustworthy, so it is blanked rather than masked partly.
    """
    if len(detections) > MAX_DETECTIONS_PER_FRAME:
        return None
    boxes: list[BoxXYXY] = []
    for detection in detections:
        if not isinstance(detection, Detection):
            return None
        try:
            coordinates = [float(v) for v in detection.box_xyxy]
            confidence = float(detection.confidence)
        except (TypeError, ValueError):
            return None
        if len(coordinates) != 4 or not all(math.isfinite(v) for v in coordinates):
            return None
        if not math.isfinite(confidence):
            return None
        clipped = clip_box_xyxy(coordinates, width, height)
        if clipped is not None:
            boxes.append(clipped)
    return boxes
