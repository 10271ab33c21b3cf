"""Masking: styles, margins, clipping, the client floor and the blanked frame."""

from __future__ import annotations

import numpy as np
import pytest

from service.config import MaskStyle
from service.masking import (
    BLANK_NOTICE,
    MaskSpec,
    blank_frame,
    clip_box_xyxy,
    expand_box_xyxy,
    mask_boxes,
)


def _noise(height: int = 120, width: int = 160, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (height, width, channels) if channels else (height, width)
    return rng.integers(40, 216, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("style", list(MaskStyle))
def test_mask_changes_only_the_grown_box(style: MaskStyle) -> None:
    image = _noise()
    spec = MaskSpec(style=style, margin=0.25)
    masked = mask_boxes(image, [(40, 20, 80, 60)], spec)
    left, top, right, bottom = expand_box_xyxy((40, 20, 80, 60), 0.25, 160, 120)
    outside = np.ones(image.shape[:2], dtype=bool)
    outside[top:bottom, left:right] = False

    assert (left, top, right, bottom) == (30, 10, 90, 70)
    assert np.array_equal(masked[outside], image[outside])
    assert not np.array_equal(masked[top:bottom, left:right], image[top:bottom, left:right])
    assert np.array_equal(image, _noise()), "the input array was modified"


def test_solid_mask_is_fill_value_in_any_depth() -> None:
    image16 = (np.arange(100 * 100, dtype=np.uint32).reshape(100, 100) * 7).astype(np.uint16)
    masked = mask_boxes(image16, [(10, 10, 30, 30)], MaskSpec(margin=0.0), fill_value=65535)
    assert masked.dtype == np.uint16
    assert (masked[10:30, 10:30] == 65535).all()
    assert masked[50, 50] == image16[50, 50]


def test_pixelate_and_blur_remove_detail() -> None:
    image = _noise(200, 200)
    for style in (MaskStyle.PIXELATE, MaskStyle.BLUR):
        masked = mask_boxes(image, [(50, 50, 150, 150)], MaskSpec(style, margin=0.0))
        region = masked[50:150, 50:150].astype(float)
        # Noise has a standard deviation near 50; a covered region keeps little of it.
        assert region.std() < 15, style


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((10, 10, 50, 50), (10.0, 10.0, 50.0, 50.0)),
        ((50, 50, 10, 10), (10.0, 10.0, 50.0, 50.0)),
        ((-20, -5, 30, 30), (0.0, 0.0, 30.0, 30.0)),
        ((150, 100, 400, 400), (150.0, 100.0, 160.0, 120.0)),
        ((200, 200, 300, 300), None),
        ((float("nan"), 0, 10, 10), None),
        ((0, 0, float("inf"), 10), None),
        ((5, 5, 5, 40), None),
    ],
)
def test_clip_box(box: tuple[float, ...], expected: tuple[float, ...] | None) -> None:
    assert clip_box_xyxy(box, 160, 120) == expected


def test_margin_is_clipped_to_the_frame() -> None:
    assert expand_box_xyxy((0, 0, 100, 100), 0.5, 120, 110) == (0, 0, 120, 110)


@pytest.mark.parametrize(
    ("requested", "floor", "expected"),
    [
        (
            MaskSpec(MaskStyle.BLUR, 0.0),
            MaskSpec(MaskStyle.SOLID, 0.15),
            MaskSpec(MaskStyle.SOLID, 0.15),
        ),
        (
            MaskSpec(MaskStyle.SOLID, 0.5),
            MaskSpec(MaskStyle.BLUR, 0.15),
            MaskSpec(MaskStyle.SOLID, 0.5),
        ),
        (
            MaskSpec(MaskStyle.PIXELATE, 0.1),
            MaskSpec(MaskStyle.BLUR, 0.2),
            MaskSpec(MaskStyle.PIXELATE, 0.2),
        ),
    ],
)
def test_client_spec_never_below_floor(
    requested: MaskSpec, floor: MaskSpec, expected: MaskSpec
) -> None:
    assert requested.at_least(floor) == expected


def test_margin_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="margin"):
        MaskSpec(margin=3.0)


@pytest.mark.parametrize("shape", [(480, 640, 3), (480, 640), (48, 64, 4), (8, 8, 3)])
def test_blank_frame_hides_everything(shape: tuple[int, ...]) -> None:
    image = np.full(shape, 128, dtype=np.uint8)
    blank = blank_frame(image)
    assert blank.shape == image.shape
    assert blank.dtype == image.dtype
    assert not (blank == 128).any(), "a pixel of the original survived"
    if shape[0] >= 16:
        assert (blank == 255).any(), f"no '{BLANK_NOTICE}' notice drawn"
