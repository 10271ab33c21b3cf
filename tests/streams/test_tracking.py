"""Hold policies frame by frame, with scripted detections and real SSIM on generated frames."""

from __future__ import annotations

import numpy as np
import pytest

from service.config import HoldPolicy, Settings
from service.tracking import Decision, HoldConfig, Tracker, merge_boxes

BOX = (100.0, 80.0, 160.0, 140.0)


def textured_frame(seed: int, size_wh: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A BGR frame of smoothed noise: structured enough for SSIM to tell two seeds apart."""
    rng = np.random.default_rng(seed)
    width, height = size_wh
    coarse = rng.integers(0, 256, size=(height // 8, width // 8), dtype=np.uint8)
    grey = np.kron(coarse, np.ones((8, 8), dtype=np.uint8))
    return np.repeat(grey[:, :, None], 3, axis=2)


def jittered(frame: np.ndarray, seed: int, amplitude: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-amplitude, amplitude + 1, size=frame.shape)
    return np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("policy", "sometimes", "expected one of none, hold, hold_sim, got 'sometimes'"),
        ("hold_frames", -1, "hold_frames: expected an integer >= 0, got -1"),
        ("max_frames", 0, "max_frames: expected an integer >= 1, got 0"),
        ("union_frames", 2.5, "union_frames: expected an integer >= 0, got 2.5"),
        ("ssim_width", 8, "ssim_width: expected an integer >= 16, got 8"),
        ("sim_threshold", 1.5, "sim_threshold: expected a value in [-1, 1], got 1.5"),
        ("max_s", float("nan"), "max_s: expected a finite value >= 0, got nan"),
        ("ssim_context", -0.5, "ssim_context: expected None or a value in [0, 10], got -0.5"),
    ],
)
def test_config_rejects_invalid_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        HoldConfig(**{field: value})  # type: ignore[arg-type]
    assert message in str(error.value)


def test_config_allows_zero_cap_without_hold_sim() -> None:
    config = HoldConfig(policy="hold", max_frames=0)
    assert config.max_frames == 0


def test_config_from_settings_maps_every_field() -> None:
    settings = Settings(
        hold_policy=HoldPolicy.HOLD,
        hold_frames=7,
        hold_sim_threshold=0.4,
        hold_max_frames=30,
        hold_max_s=1.5,
        hold_union_frames=2,
        ssim_width=96,
    )
    config = HoldConfig.from_settings(settings)
    assert config == HoldConfig("hold", 7, 0.4, 30, 1.5, 2, 96)
    assert type(config.policy) is str


def test_none_policy_clears_on_first_miss() -> None:
    tracker = Tracker(HoldConfig(policy="none"))
    frame = textured_frame(1)

    first = tracker.update(frame, [BOX], 0.0)
    second = tracker.update(frame, [], 0.04)

    assert first.decision is Decision.MASKED
    assert first.boxes_xyxy == (BOX,)
    assert second.decision is Decision.CLEAR
    assert second.boxes_xyxy == ()


def test_hold_keeps_boxes_for_hold_frames() -> None:
    tracker = Tracker(HoldConfig(policy="hold", hold_frames=3, union_frames=0))
    frame = textured_frame(1)
    unrelated = textured_frame(2)

    assert tracker.update(frame, [BOX], 0.0).decision is Decision.MASKED
    steps = [tracker.update(unrelated, [], 0.1 * i) for i in range(1, 6)]

    assert [s.decision for s in steps] == [Decision.HELD] * 3 + [Decision.CLEAR] * 2
    assert [s.mask_age_frames for s in steps[:3]] == [1, 2, 3]
    assert all(s.boxes_xyxy == (BOX,) for s in steps[:3])
    assert all(s.similarity is None for s in steps)


def test_hold_counts_blanked_frames_towards_cap() -> None:
    tracker = Tracker(HoldConfig(policy="hold", hold_frames=3))
    frame = textured_frame(1)

    tracker.update(frame, [BOX], 0.0)
    tracker.mark_blanked()
    tracker.mark_blanked()
    held = tracker.update(frame, [], 0.12)
    after_cap = tracker.update(frame, [], 0.16)

    assert held.decision is Decision.HELD
    assert held.mask_age_frames == 3
    assert after_cap.decision is Decision.CLEAR


def test_hold_does_not_resume_after_release() -> None:
    tracker = Tracker(HoldConfig(policy="hold", hold_frames=1))
    frame = textured_frame(1)

    tracker.update(frame, [BOX], 0.0)
    tracker.update(frame, [], 0.04)
    released = tracker.update(frame, [], 0.08)
    later = tracker.update(frame, [], 0.12)

    assert released.decision is Decision.CLEAR
    assert later.decision is Decision.CLEAR
    assert not tracker.holding


def test_hold_sim_holds_while_frame_similar() -> None:
    tracker = Tracker(HoldConfig(policy="hold_sim", sim_threshold=0.6, max_frames=50))
    frame = textured_frame(1)

    tracker.update(frame, [BOX], 0.0)
    similar = [tracker.update(jittered(frame, seed), [], 0.04 * seed) for seed in range(1, 5)]
    scene_change = tracker.update(textured_frame(99), [], 0.2)
    back_again = tracker.update(frame, [], 0.24)

    assert all(s.decision is Decision.HELD for s in similar)
    assert all(s.boxes_xyxy == (BOX,) for s in similar)
    assert all(s.similarity is not None and s.similarity > 0.6 for s in similar)
    assert [s.mask_age_frames for s in similar] == [1, 2, 3, 4]
    assert scene_change.decision is Decision.CLEAR
    assert scene_change.similarity is not None
    assert scene_change.similarity < 0.6
    assert back_again.decision is Decision.CLEAR


def test_hold_sim_stops_at_frame_cap() -> None:
    tracker = Tracker(HoldConfig(policy="hold_sim", sim_threshold=0.5, max_frames=4))
    frame = textured_frame(3)

    tracker.update(frame, [BOX], 0.0)
    steps = [tracker.update(frame, [], 0.01 * i) for i in range(1, 7)]

    assert [s.decision for s in steps] == [Decision.HELD] * 4 + [Decision.CLEAR] * 2


def test_hold_sim_stops_at_time_cap() -> None:
    tracker = Tracker(HoldConfig(policy="hold_sim", max_frames=1000, max_s=0.5))
    frame = textured_frame(3)

    tracker.update(frame, [BOX], 10.0)
    inside = tracker.update(frame, [], 10.5)
    outside = tracker.update(frame, [], 10.51)

    assert inside.decision is Decision.HELD
    assert outside.decision is Decision.CLEAR


def test_hold_sim_ends_when_frame_size_changes() -> None:
    tracker = Tracker(HoldConfig(policy="hold_sim"))
    tracker.update(textured_frame(4, (320, 240)), [BOX], 0.0)

    step = tracker.update(textured_frame(4, (320, 160)), [], 0.04)

    assert step.decision is Decision.CLEAR
    assert step.similarity is None


def test_hold_sim_compares_with_last_detected_frame() -> None:
    tracker = Tracker(HoldConfig(policy="hold_sim", sim_threshold=0.6))
    first, second = textured_frame(5), textured_frame(6)

    tracker.update(first, [BOX], 0.0)
    tracker.update(second, [BOX], 0.04)
    step = tracker.update(jittered(second, 1), [], 0.08)

    assert step.decision is Decision.HELD


def test_hold_sim_accepts_grey_and_uint16_frames() -> None:
    tracker = Tracker(HoldConfig(policy="hold_sim", sim_threshold=0.9))
    grey16 = textured_frame(7)[:, :, 0].astype(np.uint16) * 257

    tracker.update(grey16, [BOX], 0.0)
    step = tracker.update(grey16, [], 0.04)

    assert step.decision is Decision.HELD
    assert step.similarity == pytest.approx(1.0)


def test_union_grows_fast_and_shrinks_slowly() -> None:
    tracker = Tracker(HoldConfig(policy="hold", union_frames=2))
    frame = textured_frame(1)
    moving = [(100.0 + 10 * i, 80.0, 160.0 + 10 * i, 140.0) for i in range(5)]

    steps = [tracker.update(frame, [box], 0.04 * i) for i, box in enumerate(moving)]

    assert steps[0].boxes_xyxy == (moving[0],)
    assert steps[1].boxes_xyxy == ((100.0, 80.0, 170.0, 140.0),)
    assert steps[2].boxes_xyxy == ((100.0, 80.0, 180.0, 140.0),)
    # From frame 3 on the box found at frame 0 is older than the window and falls away.
    assert steps[3].boxes_xyxy == ((110.0, 80.0, 190.0, 140.0),)
    assert steps[4].boxes_xyxy == ((120.0, 80.0, 200.0, 140.0),)


def test_union_keeps_shrunken_detection_covered() -> None:
    tracker = Tracker(HoldConfig(policy="hold_sim", union_frames=3))
    frame = textured_frame(1)
    large = (100.0, 100.0, 200.0, 200.0)
    small = (140.0, 140.0, 160.0, 160.0)

    tracker.update(frame, [large], 0.0)
    steps = [tracker.update(frame, [small], 0.04 * i) for i in range(1, 6)]

    assert [s.boxes_xyxy for s in steps[:3]] == [(large,)] * 3
    assert steps[3].boxes_xyxy == (small,)


def test_union_off_for_none_policy() -> None:
    tracker = Tracker(HoldConfig(policy="none", union_frames=5))
    frame = textured_frame(1)

    tracker.update(frame, [(0.0, 0.0, 50.0, 50.0)], 0.0)
    step = tracker.update(frame, [(10.0, 10.0, 20.0, 20.0)], 0.04)

    assert step.boxes_xyxy == ((10.0, 10.0, 20.0, 20.0),)


def test_merge_boxes_chains_overlaps() -> None:
    a = (0.0, 0.0, 10.0, 10.0)
    b = (20.0, 0.0, 30.0, 10.0)
    bridge = (5.0, 0.0, 25.0, 10.0)
    far = (100.0, 100.0, 110.0, 110.0)

    merged = merge_boxes([a, b], [bridge, far])

    assert sorted(merged) == [(0.0, 0.0, 30.0, 10.0), far]


def test_reset_forgets_held_boxes() -> None:
    tracker = Tracker(HoldConfig(policy="hold"))
    frame = textured_frame(1)
    tracker.update(frame, [BOX], 0.0)

    tracker.reset()
    step = tracker.update(frame, [], 0.04)

    assert step.decision is Decision.CLEAR
    assert tracker.frames_seen == 1


def dark_frame_with_patch(seed: int) -> np.ndarray:
    """A mostly black frame, like the surround of an ultrasound sector, with one textured patch."""
    frame = np.zeros((240, 320, 3), dtype=np.uint8)
    frame[60:200, 80:240] = textured_frame(seed)[60:200, 80:240]
    return frame


@pytest.mark.parametrize(("context", "expected"), [(1.0, Decision.CLEAR), (None, Decision.HELD)])
def test_hold_sim_context_sees_local_change(context: float | None, expected: Decision) -> None:
    # The patch changes completely, but it covers a small part of an otherwise black frame,
    # so whole-frame SSIM stays high while SSIM around the box drops.
    config = HoldConfig(policy="hold_sim", sim_threshold=0.6, ssim_context=context)
    tracker = Tracker(config)
    box = (120.0, 100.0, 160.0, 140.0)

    tracker.update(dark_frame_with_patch(1), [box], 0.0)
    step = tracker.update(dark_frame_with_patch(2), [], 0.04)

    assert step.decision is expected


def test_hold_sim_context_ignores_far_change() -> None:
    config = HoldConfig(policy="hold_sim", sim_threshold=0.6, ssim_context=0.5)
    tracker = Tracker(config)
    first = textured_frame(1)
    changed = first.copy()
    changed[:, 200:] = textured_frame(2)[:, 200:]

    tracker.update(first, [(40.0, 40.0, 80.0, 80.0)], 0.0)
    step = tracker.update(changed, [], 0.04)

    assert step.decision is Decision.HELD
    assert step.similarity == pytest.approx(1.0)
