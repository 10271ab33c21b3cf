"""Drawing masks over boxes, and the blanked frame sent when masking was not possible.

Functions take and return numpy images of any integer or float dtype, grey (H×W) or
with channels (H×W×C); they never change the input array.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from service.config import MaskStyle

BoxXYXY = tuple[float, float, float, float]

BLANK_NOTICE = "MASKING UNAVAILABLE"


@dataclass(frozen=True)
class MaskSpec:
    """How to cover a region: the style and the margin, a fraction of each box side."""

    style: MaskStyle = MaskStyle.SOLID
    margin: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError(f"mask margin must be within [0, 2], got {self.margin}")

    def at_least(self, floor: MaskSpec) -> MaskSpec:
        """Return this spec with its style and margin raised to the floor's where they are lower."""
        style = self.style if self.style.strength >= floor.style.strength else floor.style
        return MaskSpec(style=style, margin=max(self.margin, floor.margin))


def clip_box_xyxy(box: Sequence[float], width: int, height: int) -> BoxXYXY | None:
    """Clip a box to the frame; None when it is not finite or has no area inside the frame."""
    if len(box) != 4:
        return None
    values = [float(v) for v in box]
    if not all(math.isfinite(v) for v in values):
        return None
    x1, x2 = sorted((values[0], values[2]))
    y1, y2 = sorted((values[1], values[3]))
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 - x1 <= 0.0 or y2 - y1 <= 0.0:
        return None
    return (x1, y1, x2, y2)


def expand_box_xyxy(
    box: BoxXYXY, margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Grow a box by `margin` of its side on every edge, round outwards and clip to the frame."""
    x1, y1, x2, y2 = box
    dx = (x2 - x1) * margin
    dy = (y2 - y1) * margin
    left = max(0, math.floor(x1 - dx))
    top = max(0, math.floor(y1 - dy))
    right = min(width, math.ceil(x2 + dx))
    bottom = min(height, math.ceil(y2 + dy))
    return left, top, right, bottom


def mask_regions(
    image: np.ndarray,
    regions: Iterable[tuple[int, int, int, int]],
    style: MaskStyle,
    *,
    fill_value: float = 0,
) -> np.ndarray:
    """Return a copy of `image` with each pixel region (left, top, right, bottom) covered."""
    out = image.copy()
    for left, top, right, bottom in regions:
        if right <= left or bottom <= top:
            continue
        patch = out[top:bottom, left:right]
        if style is MaskStyle.SOLID:
            patch[...] = fill_value
        elif style is MaskStyle.PIXELATE:
            patch[...] = _pixelate(patch)
        else:
            patch[...] = _blur(patch)
    return out


def mask_boxes(
    image: np.ndarray,
    boxes_xyxy: Iterable[Sequence[float]],
    spec: MaskSpec,
    *,
    fill_value: float = 0,
) -> np.ndarray:
    """Return a copy of `image` with every box, grown by the spec's margin, covered."""
    height, width = image.shape[:2]
    regions = []
    for box in boxes_xyxy:
        clipped = clip_box_xyxy(box, width, height)
        if clipped is not None:
            regions.append(expand_box_xyxy(clipped, spec.margin, width, height))
    return mask_regions(image, regions, spec.style, fill_value=fill_value)


def blank_frame(image: np.ndarray, notice: str = BLANK_NOTICE) -> np.ndarray:
    """Return a black frame of the image's shape and dtype with a burned-in notice."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    if min(height, width) < 16:
        return out
    white = _white_value(image.dtype)
    scale = max(0.3, min(width / 640.0, height / 480.0))
    thickness = max(1, round(scale * 2))
    (text_w, text_h), _ = cv2.getTextSize(notice, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    if text_w > width * 0.95:
        scale *= width * 0.95 / text_w
        (text_w, text_h), _ = cv2.getTextSize(notice, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    origin = (max(0, (width - text_w) // 2), max(text_h, (height + text_h) // 2))
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.putText(
        canvas, notice, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA
    )
    lit = canvas > 127
    out[lit] = white
    return out


def _white_value(dtype: np.dtype) -> float:
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def _pixelate(patch: np.ndarray) -> np.ndarray:
    height, width = patch.shape[:2]
    cell = max(8, min(height, width) // 6)
    small_w = max(1, width // cell)
    small_h = max(1, height // cell)
    work = patch.astype(np.float32)
    small = cv2.resize(work, (small_w, small_h), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    return big.reshape(patch.shape).astype(patch.dtype)


def _blur(patch: np.ndarray) -> np.ndarray:
    height, width = patch.shape[:2]
    # A kernel as large as the region leaves no readable structure inside it.
    kernel = max(3, (max(height, width) // 2) | 1)
    work = patch.astype(np.float32)
    blurred = cv2.GaussianBlur(work, (kernel, kernel), sigmaX=0)
    blurred = cv2.GaussianBlur(blurred, (kernel, kernel), sigmaX=0)
    return blurred.reshape(patch.shape).astype(patch.dtype)
