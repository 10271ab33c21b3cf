"""Overlay removal: the error inside burned-in text and markers drops against the clean phantom."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.research.clean import clean_image, overlay_mask
from service.research.phantoms import render_still


@pytest.mark.parametrize("seed", [500, 501, 502, 503])
def test_clean_cuts_error_in_overlays(seed: int) -> None:
    still = render_still(seed, "head", overlays=True)
    overlay = np.any(still.image_bgr != still.clean_bgr, axis=2)
    reference = still.clean_bgr.astype(np.float64)

    cleaned = clean_image(still.image_bgr).image_bgr.astype(np.float64)
    error_before = np.abs(still.image_bgr.astype(np.float64) - reference)[overlay].mean()
    error_after = np.abs(cleaned - reference)[overlay].mean()

    assert overlay.sum() > 500
    assert error_after < 0.5 * error_before


def test_clean_keeps_most_of_picture() -> None:
    still = render_still(504, "abdomen", overlays=True)
    overlay = np.any(still.image_bgr != still.clean_bgr, axis=2)
    away = ~cv2.dilate(overlay.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)

    result = clean_image(still.image_bgr)
    error_away = np.abs(result.image_bgr.astype(np.float64) - still.clean_bgr)[away].mean()

    assert (result.mask > 0).mean() < 0.15
    assert error_away < 5.0


def test_clean_on_blank_image_changes_nothing() -> None:
    blank = np.zeros((120, 160, 3), np.uint8)
    result = clean_image(blank)

    assert not result.mask.any()
    assert np.array_equal(result.image_bgr, blank)


def test_overlay_mask_rejects_grey_input() -> None:
    with pytest.raises(ValueError, match="BGR uint8"):
        overlay_mask(np.zeros((10, 10), np.uint8))
