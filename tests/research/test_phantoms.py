"""Phantom stills: determinism, and label geometry checked against the drawn scene."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from service.research.anatomy import (
    MID_SAGITTAL,
    NEGATIVE_PLANES,
    POSITIVE_PLANES,
    TRANSVERSE,
    Frame,
    Scene,
    Target,
    Tissue,
    draw_mid_sagittal,
    draw_transverse,
)
from service.research.phantoms import render_still


def test_still_same_seed_same_output() -> None:
    first = render_still(11, "transverse")
    second = render_still(11, "transverse")

    assert np.array_equal(first.image_bgr, second.image_bgr)
    assert first.boxes == second.boxes


def test_still_other_seed_differs() -> None:
    first = render_still(11, "transverse")
    other = render_still(12, "transverse")

    assert not np.array_equal(first.image_bgr, other.image_bgr)


@pytest.mark.parametrize("plane", POSITIVE_PLANES)
def test_positive_box_square_inside_image(plane: str) -> None:
    for seed in range(12):
        still = render_still(seed, plane, size_wh=(640, 480))
        height, width = still.image_bgr.shape[:2]

        assert len(still.boxes) == 1
        class_id, (x0, y0, x1, y1) = still.boxes[0]
        assert class_id == POSITIVE_PLANES.index(plane)
        assert 0 <= x0 < x1 <= width
        assert 0 <= y0 < y1 <= height
        assert abs((x1 - x0) - (y1 - y0)) < 1e-6
        # Inside the field of view, so the box never covers the black border alone.
        assert still.clean_bgr[int((y0 + y1) / 2), int((x0 + x1) / 2)].max() > 0


@pytest.mark.parametrize("plane", NEGATIVE_PLANES)
def test_negative_planes_have_no_boxes(plane: str) -> None:
    still = render_still(5, plane)

    assert still.boxes == []
    assert still.image_bgr.shape == (480, 640, 3)
    assert still.image_bgr.dtype == np.uint8


@pytest.mark.parametrize(
    ("drawer", "class_id"), [(draw_transverse, TRANSVERSE), (draw_mid_sagittal, MID_SAGITTAL)]
)
def test_box_encloses_bright_target(drawer: Callable[..., Target], class_id: int) -> None:
    """Only the genital structures echo brighter than skin, bone aside; the box contains them."""
    for seed in range(8):
        rng = np.random.default_rng(seed)
        tissue = Tissue.random(rng)
        scene = Scene.blank((640, 480))
        frame = Frame(scene, (320.0, 240.0), 1.2, float(rng.uniform(0, 360)))
        target = drawer(frame, tissue, rng)
        x0, y0, x1, y1 = target.box_xyxy()
        bright = (scene.echo > tissue.skin * 1.05) & (scene.bone == 0)
        ys, xs = np.nonzero(bright)
        inside = (xs >= x0 - 2) & (xs <= x1 + 2) & (ys >= y0 - 2) & (ys <= y1 + 2)

        assert target.class_id == class_id
        assert len(xs) > 20
        assert inside.mean() > 0.95
