"""Probe sweeps: frames, ground truth, determinism and the mp4 round trip."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from service.research.phantoms import render_video_frames, write_video


def test_sweep_frames_and_boxes() -> None:
    frames = list(render_video_frames(seed=4, n_frames=40, size_wh=(320, 240)))

    assert [f.index for f in frames] == list(range(40))
    assert all(f.image_bgr.shape == (240, 320, 3) for f in frames)
    assert all(f.image_bgr.dtype == np.uint8 for f in frames)
    with_target = [f for f in frames if f.boxes]
    # The sweep starts on a negative, so the target is missing at first and present later.
    assert not frames[0].boxes
    assert len(with_target) >= 10
    for frame in with_target:
        for class_id, (x0, y0, x1, y1) in frame.boxes:
            assert class_id in (0, 1)
            assert 0 <= x0 < x1 <= 320
            assert 0 <= y0 < y1 <= 240


def test_sweep_same_seed_same_frames() -> None:
    first = list(render_video_frames(seed=9, n_frames=6, size_wh=(160, 128)))
    second = list(render_video_frames(seed=9, n_frames=6, size_wh=(160, 128)))

    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.image_bgr, b.image_bgr)
        assert a.boxes == b.boxes


def test_write_video_round_trip(tmp_path: Path) -> None:
    path = write_video(tmp_path / "sweep.mp4", seed=2, n_frames=12, size_wh=(320, 240), fps=25)
    truth = json.loads(path.with_suffix(".json").read_text())

    with av.open(str(path)) as container:
        decoded = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    expected = list(render_video_frames(seed=2, n_frames=12, size_wh=(320, 240)))

    assert truth["fps"] == 25
    assert truth["size_wh"] == [320, 240]
    assert len(truth["frames"]) == 12
    assert len(decoded) == 12
    assert decoded[0].shape == (240, 320, 3)
    for frame, truth_frame in zip(expected, truth["frames"], strict=True):
        assert truth_frame["index"] == frame.index
        assert [b["class_id"] for b in truth_frame["boxes"]] == [c for c, _ in frame.boxes]
    # H.264 at CRF 18 keeps the picture close to what was rendered.
    error = np.abs(decoded[5].astype(np.int16) - expected[5].image_bgr.astype(np.int16)).mean()
    assert error < 6.0
