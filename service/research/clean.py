"""Removal of burned-in text and markers before training, as the study preprocessed its images.

Steps:
1. A white top-hat with a 7×7 rectangle keeps thin bright strokes (text, calipers, ticks).
2. Otsu's threshold on that response is the high level of a hysteresis threshold, and half of it
   the low level. Hysteresis keeps whole strokes and drops isolated speckle peaks.
3. Coloured pixels join the mask, because a grey B-mode image has none.
4. A 3×3 dilation covers the stroke edges, and OpenCV inpainting fills the mask.

NOTE: the top-hat also finds thin bright anatomy (skull, bone edges), which gets inpainted too,
and wide blocks such as grey bars pass through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.filters import apply_hysteresis_threshold

TOPHAT_KERNEL_WH = (7, 7)
DILATION_KERNEL_WH = (3, 3)
# Lowest top-hat level accepted as a stroke seed: annotations are drawn near white, so their
# response exceeds this over any background, while speckle in an evenly lit image rarely does.
STROKE_RESPONSE_MIN = 100.0
# Channel spread above which a pixel counts as coloured; JPEG noise on grey stays well below it.
COLOUR_SPREAD_MIN = 40


@dataclass(frozen=True)
class CleanResult:
    """The inpainted BGR image and the uint8 mask (255 = removed) that was filled."""

    image_bgr: np.ndarray
    mask: np.ndarray


def overlay_mask(image_bgr: np.ndarray, low_ratio: float = 0.5) -> np.ndarray:
    """Find text and marker pixels; returns a uint8 mask, 255 where an overlay was found."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(
            f"expected a BGR uint8 image (H×W×3), got shape {image_bgr.shape} {image_bgr.dtype}"
        )
    brightest = image_bgr.max(axis=2)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, TOPHAT_KERNEL_WH)
    tophat = cv2.morphologyEx(brightest, cv2.MORPH_TOPHAT, kernel)

    # Otsu over the pixels with some response splits speckle peaks from strokes. Over all pixels
    # it would split the flat background from speckle and mask most of the picture.
    responding = tophat[tophat > 0]
    if responding.size == 0:
        return np.zeros(brightest.shape, np.uint8)
    high, _ = cv2.threshold(responding.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    high = max(float(high), STROKE_RESPONSE_MIN)
    strokes = apply_hysteresis_threshold(tophat, high * low_ratio, high)

    spread = brightest.astype(np.int16) - image_bgr.min(axis=2).astype(np.int16)
    coloured = spread > COLOUR_SPREAD_MIN

    mask = (strokes | coloured).astype(np.uint8) * 255
    dilation = cv2.getStructuringElement(cv2.MORPH_RECT, DILATION_KERNEL_WH)
    return cv2.dilate(mask, dilation)


def clean_image(image_bgr: np.ndarray, inpaint_radius_px: float = 3.0) -> CleanResult:
    """Remove burned-in text and markers from a BGR uint8 ultrasound image by inpainting."""
    mask = overlay_mask(image_bgr)
    if not mask.any():
        return CleanResult(image_bgr.copy(), mask)
    filled = cv2.inpaint(image_bgr, mask, inpaint_radius_px, cv2.INPAINT_TELEA)
    return CleanResult(filled, mask)
