"""Letterbox and decoding of the lean detectors, checked against ultralytics and torchvision."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.detection.yolo import (
    Placement,
    decode_batch,
    input_shape_hw,
    letterbox_batch,
    nms_xyxy,
)

os.environ.setdefault("YOLO_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_STILLS = REPO_ROOT.parent / "shared" / "data" / "real" / "hc18"


def _real_frames() -> list[np.ndarray]:
    if not REAL_STILLS.is_dir():
        pytest.skip(f"real ultrasound stills not found at {REAL_STILLS}")
    frames = [cv2.imread(str(path)) for path in sorted(REAL_STILLS.glob("*.png"))[:2]]
    # An odd-sized crop, so that the padding is uneven on both axes.
    frames.append(np.ascontiguousarray(frames[0][13:346, 7:524]))
    frames.append(np.ascontiguousarray(cv2.rotate(frames[1], cv2.ROTATE_90_CLOCKWISE)))
    return frames


def test_letterbox_matches_ultralytics() -> None:
    from ultralytics.data.augment import LetterBox

    for frame in _real_frames():
        shape_hw = input_shape_hw([frame], 320, 32, rectangular=True)
        blob, _ = letterbox_batch([frame], shape_hw)
        expected = LetterBox(new_shape=(320, 320), auto=True, stride=32)(image=frame)
        ours = np.rint(blob[0].transpose(1, 2, 0)[..., ::-1] * 255).astype(np.uint8)
        assert ours.shape == expected.shape, frame.shape
        assert np.array_equal(ours, expected), frame.shape


def test_square_input_when_not_rectangular() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    assert input_shape_hw([frame], 320, 32, rectangular=False) == (320, 320)
    assert input_shape_hw([frame], 320, 32, rectangular=True) == (256, 320)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 900), st.integers(1, 900)), min_size=1, max_size=4),
    imgsz=st.sampled_from([160, 320, 384]),
)
def test_every_frame_fits_rectangular_input(sizes: list[tuple[int, int]], imgsz: int) -> None:
    frames = [np.zeros((height, width, 3), np.uint8) for height, width in sizes]
    height_px, width_px = input_shape_hw(frames, imgsz, 32, rectangular=True)
    assert height_px % 32 == 0
    assert width_px % 32 == 0
    assert max(height_px, width_px) <= max(imgsz, 32)

    blob, placements = letterbox_batch(frames, (height_px, width_px))
    assert blob.shape == (len(frames), 3, height_px, width_px)
    for placement, (height, width) in zip(placements, sizes, strict=True):
        scaled_w = round(width * placement.gain_x)
        scaled_h = round(height * placement.gain_y)
        assert placement.pad_x >= 0
        assert placement.pad_y >= 0
        assert placement.pad_x + scaled_w <= width_px
        assert placement.pad_y + scaled_h <= height_px


def _head_output(rng: np.random.Generator, anchors: int, classes: int, shape_hw: tuple[int, int]):
    """A raw head output with clusters of overlapping boxes, as a trained model emits them."""
    height_px, width_px = shape_hw
    output = np.zeros((4 + classes, anchors), np.float32)
    centres = rng.uniform([0, 0], [width_px, height_px], size=(12, 2))
    cluster = rng.integers(0, len(centres), anchors)
    output[0] = centres[cluster, 0] + rng.normal(0, 4, anchors)
    output[1] = centres[cluster, 1] + rng.normal(0, 4, anchors)
    output[2] = rng.uniform(8, 90, anchors)
    output[3] = rng.uniform(8, 90, anchors)
    output[4:] = rng.beta(0.4, 2.0, size=(classes, anchors))
    return output


@pytest.mark.parametrize("frame_hw", [(480, 640), (540, 800), (333, 517), (900, 300)])
def test_decode_matches_ultralytics_nms(frame_hw: tuple[int, int]) -> None:
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes

    rng = np.random.default_rng(sum(frame_hw))
    frame = np.zeros((*frame_hw, 3), np.uint8)
    shape_hw = input_shape_hw([frame], 320, 32, rectangular=True)
    _, placements = letterbox_batch([frame], shape_hw)
    output = _head_output(rng, 2100, 2, shape_hw)[None]

    (ours,) = decode_batch(output, placements, conf=0.318, iou=0.6, max_detections=32)
    (theirs,) = non_max_suppression(torch.from_numpy(output), 0.318, 0.6, max_det=32)
    theirs_xyxy = scale_boxes(shape_hw, theirs[:, :4].clone(), frame_hw).numpy()

    assert len(ours.scores) == len(theirs) > 0
    np.testing.assert_allclose(ours.boxes_xyxy, theirs_xyxy, atol=0.05)
    np.testing.assert_allclose(ours.scores, theirs[:, 4].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(ours.class_ids, theirs[:, 5].numpy().astype(int))


def test_nms_matches_torchvision() -> None:
    import torchvision

    rng = np.random.default_rng(7)
    corners = rng.uniform(0, 300, size=(400, 2))
    boxes = np.hstack([corners, corners + rng.uniform(5, 80, size=(400, 2))]).astype(np.float32)
    scores = rng.uniform(0, 1, 400).astype(np.float32)
    for threshold in (0.3, 0.5, 0.7):
        expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
        assert nms_xyxy(boxes, scores, threshold).tolist() == expected.tolist()
        capped = nms_xyxy(boxes, scores, threshold, max_keep=10)
        assert capped.tolist() == expected[:10].tolist()


def test_decode_keeps_nothing_below_conf() -> None:
    placement = Placement(gain_x=0.5, gain_y=0.5, pad_x=0.0, pad_y=16.0, size_wh=(640, 480))
    output = np.zeros((1, 6, 100), np.float32)
    output[0, :4] = [[160.0], [128.0], [20.0], [20.0]]
    output[0, 4:] = 0.318
    (boxes,) = decode_batch(output, [placement], conf=0.318, iou=0.6, max_detections=32)
    assert boxes.boxes_xyxy.shape == (0, 4)


def test_decode_maps_box_to_frame_pixels() -> None:
    placement = Placement(gain_x=0.5, gain_y=0.5, pad_x=0.0, pad_y=16.0, size_wh=(640, 480))
    output = np.zeros((1, 6, 1), np.float32)
    output[0, :, 0] = [160.0, 136.0, 40.0, 20.0, 0.1, 0.9]
    (boxes,) = decode_batch(output, [placement], conf=0.318, iou=0.6, max_detections=32)
    # centre (160, 136) in input pixels is (320, 240) in the frame; 40×20 becomes 80×40.
    np.testing.assert_allclose(boxes.boxes_xyxy, [[280.0, 220.0, 360.0, 260.0]])
    assert boxes.class_ids.tolist() == [1]


@pytest.mark.parametrize(("shape", "frames"), [((6, 100), 1), ((2, 6, 100), 1), ((1, 4, 100), 1)])
def test_decode_rejects_wrong_output_shape(shape: tuple[int, ...], frames: int) -> None:
    placement = Placement(gain_x=1.0, gain_y=1.0, pad_x=0.0, pad_y=0.0, size_wh=(32, 32))
    with pytest.raises(ValueError, match="detect head output"):
        decode_batch(
            np.zeros(shape, np.float32), [placement] * frames, conf=0.3, iou=0.5, max_detections=5
        )
