"""The start-up self-test that gates readiness.

The detector runs on a known frame through the real batcher. When the frame comes with a
labelled target, the detector must find it. In every case a mask drawn over the target box
must cover it completely and leave the rest of the frame unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.config import DEFAULT_MODEL_PATH, PACKAGE_DIR, Settings
from service.masking import BoxXYXY, expand_box_xyxy
from service.pipeline import FrameOutcome, FramePipeline
from service.tracking import Decision

logger = logging.getLogger(__name__)

DEFAULT_SELFTEST_IMAGE = PACKAGE_DIR / "models" / "selftest.png"
SELFTEST_DEADLINE_S = 60.0
MIN_IOU = 0.3


class SelfTestError(RuntimeError):
    """The model or the masker failed the start-up self-test."""


@dataclass(frozen=True)
class SelfTestFrame:
    image_bgr: np.ndarray
    target_xyxy: BoxXYXY
    labelled: bool


def load_selftest_frame(path: Path | None) -> SelfTestFrame:
    """Load the frame at `path` (its box in `<path>.json`), else the packaged one or a gradient."""
    path = path if path is not None else DEFAULT_SELFTEST_IMAGE
    if path.is_file():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        label_path = path.with_suffix(".json")
        if image is None:
            raise SelfTestError(f"cannot read self-test image {path}")
        if label_path.is_file():
            label = json.loads(label_path.read_text(encoding="utf-8"))
            x1, y1, x2, y2 = (float(v) for v in label["box_xyxy"])
            return SelfTestFrame(image, (x1, y1, x2, y2), labelled=True)
    # No labelled frame: a plain gradient still proves the model runs and the mask is drawn.
    ramp = np.linspace(40, 200, 320, dtype=np.uint8)
    image = np.repeat(np.repeat(ramp[None, :, None], 240, axis=0), 3, axis=2)
    return SelfTestFrame(np.ascontiguousarray(image), (100.0, 60.0, 180.0, 140.0), labelled=False)


def detection_required(settings: Settings, *, injected_detector: bool = False) -> bool:
    """Whether the self-test must see the model find its labelled target.

    The packaged frame is a phantom labelled for the shipped model. A model trained on other
    images need not find it, so such a model is held only to a frame the operator supplies in
    SONOMASK_SELFTEST_IMAGE. A detector passed to the app directly is not the model file the
    settings name, so it counts as such a model.
    """
    if not settings.selftest_require_detection:
        return False
    if settings.selftest_image is not None:
        return True
    if injected_detector:
        return False
    shipped = {DEFAULT_MODEL_PATH.resolve(), DEFAULT_MODEL_PATH.with_suffix(".onnx").resolve()}
    return settings.model_path.resolve() in shipped


async def run_selftest(
    pipeline: FramePipeline, frame: SelfTestFrame, *, require_detection: bool
) -> None:
    """Raise SelfTestError unless detection and masking both behave on the known frame."""
    outcome = await pipeline.run(frame.image_bgr, deadline_s=time.monotonic() + SELFTEST_DEADLINE_S)
    if outcome.blanked:
        raise SelfTestError(f"the detector failed on the self-test frame: {outcome.failure_detail}")

    if frame.labelled and require_detection:
        best = max((iou_xyxy(box, frame.target_xyxy) for box in outcome.boxes_xyxy), default=0.0)
        if best < MIN_IOU:
            raise SelfTestError(
                f"the detector missed the self-test target (best IoU {best:.2f}, expected at "
                f"least {MIN_IOU}); check the model, or set "
                "SONOMASK_SELFTEST_REQUIRE_DETECTION=false for a model trained on other images"
            )

    _check_mask_drawn(pipeline, frame)
    logger.info(
        "self-test passed (labelled=%s, detections=%d)", frame.labelled, len(outcome.boxes_xyxy)
    )


def _check_mask_drawn(pipeline: FramePipeline, frame: SelfTestFrame) -> None:
    image = frame.image_bgr
    height, width = image.shape[:2]
    outcome = FrameOutcome(Decision.MASKED, pipeline.floor_spec, boxes_xyxy=(frame.target_xyxy,))
    masked = outcome.render(image)
    left, top, right, bottom = expand_box_xyxy(
        frame.target_xyxy, pipeline.floor_spec.margin, width, height
    )
    inside_before = image[top:bottom, left:right].astype(np.int32)
    inside_after = masked[top:bottom, left:right].astype(np.int32)
    if np.array_equal(inside_before, inside_after):
        raise SelfTestError("the masker left the self-test target unchanged")
    outside = np.ones((height, width), dtype=bool)
    outside[top:bottom, left:right] = False
    if not np.array_equal(image[outside], masked[outside]):
        raise SelfTestError("the masker changed pixels outside the self-test target")


def iou_xyxy(a: BoxXYXY, b: BoxXYXY) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
