"""The tensors around a YOLO detection model, in numpy and OpenCV only.

`letterbox_batch` turns BGR frames into the model's NCHW float input, and `decode_batch`
turns the raw head output back into boxes in each frame's own pixels. The ONNX Runtime
and OpenVINO detectors use these instead of ultralytics' predictor, so that the CPU path
needs neither torch nor torchvision at run time.

The output layout is the one ultralytics exports for YOLOv8 and later detect heads
without built-in NMS: (batch, 4 + classes, anchors), each column a box centre, width and
height in input pixels followed by one sigmoid score per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114  # the grey that ultralytics pads its letterbox with, used in training too

# Class-aware NMS runs once over all classes by moving each class's boxes this far apart.
_CLASS_OFFSET_PX = 7680.0
# Candidates kept before NMS, highest confidence first: bounds NMS time on a noisy frame.
MAX_NMS_CANDIDATES = 30_000


@dataclass(frozen=True)
class Placement:
    """Placement of one frame in the letterboxed input: `input_x = frame_x * gain_x + pad_x`.

    The gains are per axis because each scaled side is rounded to whole pixels.
    """

    gain_x: float
    gain_y: float
    pad_x: float
    pad_y: float
    size_wh: tuple[int, int]


def input_shape_hw(
    frames: Sequence[np.ndarray], imgsz: int, stride: int, *, rectangular: bool
) -> tuple[int, int]:
    """Input height and width for a batch: `imgsz` square, or the smallest stride multiple.

    With `rectangular`, the longer side of every frame is scaled to `imgsz` and the input
    is the smallest stride-aligned rectangle that contains every frame of the batch, which
    saves the compute spent on padding (a 4:3 frame at 320 runs at 320×256).
    """
    if not rectangular:
        return imgsz, imgsz
    height_px = width_px = stride
    for frame in frames:
        frame_h, frame_w = frame.shape[:2]
        gain = imgsz / max(frame_h, frame_w)
        height_px = max(height_px, _ceil_to(max(round(frame_h * gain), 1), stride))
        width_px = max(width_px, _ceil_to(max(round(frame_w * gain), 1), stride))
    return height_px, width_px


def letterbox_batch(
    frames: Sequence[np.ndarray], shape_hw: tuple[int, int]
) -> tuple[np.ndarray, list[Placement]]:
    """Scale each BGR uint8 frame into `shape_hw` keeping its aspect, centred on grey padding.

    Returns the model input (N×3×H×W float32 RGB in [0, 1]) and each frame's placement.
    """
    height_px, width_px = shape_hw
    canvas = np.full((len(frames), height_px, width_px, 3), PAD_VALUE, dtype=np.uint8)
    placements = []
    for index, frame in enumerate(frames):
        frame_h, frame_w = frame.shape[:2]
        gain = min(height_px / frame_h, width_px / frame_w)
        scaled_w = max(round(frame_w * gain), 1)
        scaled_h = max(round(frame_h * gain), 1)
        left = (width_px - scaled_w) // 2
        top = (height_px - scaled_h) // 2
        target = canvas[index, top : top + scaled_h, left : left + scaled_w]
        if (scaled_w, scaled_h) == (frame_w, frame_h):
            target[...] = frame
        else:
            target[...] = cv2.resize(frame, (scaled_w, scaled_h), interpolation=cv2.INTER_LINEAR)
        gain_x, gain_y = scaled_w / frame_w, scaled_h / frame_h
        placements.append(Placement(gain_x, gain_y, float(left), float(top), (frame_w, frame_h)))

    # One pass: BGR→RGB by reversing the channel axis, HWC→CHW, uint8→float in [0, 1].
    blob = np.empty((len(frames), 3, height_px, width_px), dtype=np.float32)
    np.multiply(canvas[..., ::-1].transpose(0, 3, 1, 2), np.float32(1 / 255), out=blob)
    return blob, placements


@dataclass(frozen=True)
class FrameBoxes:
    """Boxes found in one frame: `boxes_xyxy` (K×4, frame pixels), `scores` (K), `class_ids` (K)."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


def decode_batch(
    output: np.ndarray,
    placements: Sequence[Placement],
    *,
    conf: float,
    iou: float,
    max_detections: int,
) -> list[FrameBoxes]:
    """Turn the head output (N×(4+C)×A) into the boxes of each frame, after class-aware NMS.

    A box is kept when its best class score is above `conf`. When two boxes of one class
    overlap with an IoU above `iou`, the lower-scoring one is dropped.
    """
    if output.ndim != 3 or output.shape[0] != len(placements) or output.shape[1] < 5:
        raise ValueError(
            f"expected a detect head output of shape (batch={len(placements)}, 4 + classes, "
            f"anchors), got {output.shape}"
        )
    return [
        _decode_frame(output[index], placement, conf, iou, max_detections)
        for index, placement in enumerate(placements)
    ]


def _decode_frame(
    prediction: np.ndarray, placement: Placement, conf: float, iou: float, max_detections: int
) -> FrameBoxes:
    class_scores = prediction[4:]
    best_scores = class_scores.max(axis=0)
    candidates = np.flatnonzero(best_scores > conf)
    if candidates.size > MAX_NMS_CANDIDATES:
        top = np.argpartition(-best_scores[candidates], MAX_NMS_CANDIDATES)
        candidates = candidates[top[:MAX_NMS_CANDIDATES]]

    scores = best_scores[candidates]
    class_ids = class_scores[:, candidates].argmax(axis=0)
    centre_x, centre_y, width, height = prediction[:4, candidates]
    boxes = np.stack(
        [centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2],
        axis=1,
    )

    shifted = boxes + (class_ids * _CLASS_OFFSET_PX)[:, None]
    keep = nms_xyxy(shifted, scores, iou, max_keep=max_detections)
    return FrameBoxes(
        boxes_xyxy=_to_frame_pixels(boxes[keep], placement),
        scores=scores[keep],
        class_ids=class_ids[keep],
    )


def nms_xyxy(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    *,
    max_keep: int | None = None,
) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, highest score first, at most `max_keep`.

    A box is dropped when its IoU with a higher-scoring kept box is above `iou_threshold`.
    Greedy NMS keeps boxes in score order, so stopping at `max_keep` gives the first
    `max_keep` of the full result, in at most `max_keep` passes over the candidates.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes_xyxy[:, i] for i in range(4))
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep: list[int] = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best = order[0]
        keep.append(best)
        rest = order[1:]
        overlap_w = (np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])).clip(0)
        overlap_h = (np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])).clip(0)
        intersection = overlap_w * overlap_h
        union = areas[best] + areas[rest] - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = np.where(union > 0, intersection / union, 0.0)
        order = rest[overlap <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def _to_frame_pixels(boxes_xyxy: np.ndarray, placement: Placement) -> np.ndarray:
    frame_w, frame_h = placement.size_wh
    boxes = boxes_xyxy.astype(np.float64, copy=True)
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - placement.pad_x) / placement.gain_x).clip(0, frame_w)
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - placement.pad_y) / placement.gain_y).clip(0, frame_h)
    return boxes


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
