"""Per-stream mask tracking: the decision each output frame gets, and the hold policies.

A `Tracker` keeps the state of one stream (or one video, or one multi-frame instance) and
decides, for every frame with a fresh detector result, which boxes to mask:

- `none`: the detector's boxes, nothing more.
- `hold`: when the detector finds nothing, keep the last boxes for `hold_frames` frames.
- `hold_sim`: when the detector finds nothing, keep the last boxes while the frame stays
  similar (SSIM on a small grey copy) to the last frame that had a detection, up to
  `max_frames` frames and `max_s` seconds. By default SSIM is averaged only around the held
  boxes (`ssim_context`), because the static parts of an ultrasound frame (the black
  surround of the field of view, text overlays) keep whole-frame SSIM high after the probe
  has moved on.

Under `hold` and `hold_sim` the mask grows fast and shrinks slowly. Each fresh box is
merged with the boxes detected in the previous `union_frames` frames, so a mask over a
moving target also covers the path between two detections.

This module is a leaf: it imports numpy, OpenCV and scikit-image only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import cv2
import numpy as np
from skimage.metrics import structural_similarity


class Decision(StrEnum):
    """Outcome of one output frame."""

    MASKED = "masked"  # fresh detections were masked
    HELD = "held"  # no fresh detection, the tracker kept the last mask
    CLEAR = "clear"  # nothing found and nothing held: the frame is sent as it is
    BLANKED = "blanked"  # detection failed or timed out: the whole frame is blanked


BoxXYXY = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackStep:
    """The tracker's verdict on one frame: its decision and the boxes to mask, before margin."""

    decision: Decision
    boxes_xyxy: tuple[BoxXYXY, ...]
    mask_age_frames: int = 0
    similarity: float | None = None


HOLD_POLICIES = ("none", "hold", "hold_sim")

# SSIM uses a 7×7 window by default, so the small grey copy needs at least 7 rows.
_MIN_SSIM_HEIGHT = 7


class HoldSettings(Protocol):
    """The tracking fields of the service settings, read by `HoldConfig.from_settings`."""

    @property
    def hold_policy(self) -> str: ...
    @property
    def hold_frames(self) -> int: ...
    @property
    def hold_sim_threshold(self) -> float: ...
    @property
    def hold_max_frames(self) -> int: ...
    @property
    def hold_max_s(self) -> float: ...
    @property
    def hold_union_frames(self) -> int: ...
    @property
    def ssim_width(self) -> int: ...
    @property
    def hold_ssim_context(self) -> float | None: ...


@dataclass(frozen=True)
class HoldConfig:
    """How a tracker holds a mask through frames in which the detector found nothing.

    `hold_frames` applies to `hold`. `sim_threshold`, `max_frames`, `max_s`, `ssim_width`
    and `ssim_context` apply to `hold_sim`, and `union_frames` to both. `ssim_context` is the
    margin around each held box, as a fraction of the box side, over which the SSIM map is
    averaged. None averages it over the whole frame.
    """

    policy: str = "hold_sim"
    hold_frames: int = 15
    sim_threshold: float = 0.4
    max_frames: int = 60
    max_s: float = 3.0
    union_frames: int = 5
    ssim_width: int = 160
    ssim_context: float | None = 0.5

    def __post_init__(self) -> None:
        # A StrEnum member (the settings' HoldPolicy) is stored as its plain value.
        object.__setattr__(self, "policy", str(self.policy))
        if self.policy not in HOLD_POLICIES:
            raise ValueError(
                f"hold policy: expected one of {', '.join(HOLD_POLICIES)}, got {self.policy!r}"
            )
        _check_int("hold_frames", self.hold_frames, minimum=0)
        _check_int("max_frames", self.max_frames, minimum=1 if self.policy == "hold_sim" else 0)
        _check_int("union_frames", self.union_frames, minimum=0)
        _check_int("ssim_width", self.ssim_width, minimum=16)
        if not -1.0 <= self.sim_threshold <= 1.0:
            raise ValueError(
                f"sim_threshold: expected a value in [-1, 1], got {self.sim_threshold!r}"
            )
        if not (math.isfinite(self.max_s) and self.max_s >= 0.0):
            raise ValueError(f"max_s: expected a finite value >= 0, got {self.max_s!r}")
        context = self.ssim_context
        if context is not None and not (math.isfinite(context) and 0.0 <= context <= 10.0):
            raise ValueError(f"ssim_context: expected None or a value in [0, 10], got {context!r}")

    @classmethod
    def from_settings(cls, settings: HoldSettings) -> HoldConfig:
        """Build the config from the service settings' `hold_*` and `ssim_width` fields."""
        return cls(
            policy=str(settings.hold_policy),
            hold_frames=settings.hold_frames,
            sim_threshold=settings.hold_sim_threshold,
            max_frames=settings.hold_max_frames,
            max_s=settings.hold_max_s,
            union_frames=settings.hold_union_frames,
            ssim_width=settings.ssim_width,
            ssim_context=settings.hold_ssim_context,
        )


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


class Tracker:
    """The hold state of one stream. Feed it every frame in order, from one task at a time.

    `update` takes a frame with a fresh detector result (possibly no boxes) and
    `mark_blanked` counts a frame whose detection failed, so the hold caps count it too.

    NOTE: `update` computes SSIM in the calling thread, which for `FramePipeline` is the
    event loop. That took about 1.2 ms per 640×480 frame at `ssim_width` 160 on one busy CPU
    core. Much larger `ssim_width` values would stall other streams.
    """

    def __init__(self, config: HoldConfig | None = None) -> None:
        self.config = config if config is not None else HoldConfig()
        self._frame_index = -1
        self._held_boxes: tuple[BoxXYXY, ...] = ()
        self._detected_index = -1
        self._detected_s = 0.0
        self._reference_grey: np.ndarray | None = None
        self._reference_width_px = 0
        self._recent: deque[tuple[int, tuple[BoxXYXY, ...]]] = deque()

    @property
    def frames_seen(self) -> int:
        """Frames passed to `update` or `mark_blanked` so far."""
        return self._frame_index + 1

    @property
    def holding(self) -> bool:
        """True while there are boxes that a frame without detections may keep."""
        return bool(self._held_boxes)

    def update(
        self, frame_bgr: np.ndarray, boxes_xyxy: Sequence[BoxXYXY], now_s: float
    ) -> TrackStep:
        """Decide one frame from the detector's boxes; `now_s` is a `time.monotonic()` instant."""
        self._frame_index += 1
        fresh = tuple(_as_box(box) for box in boxes_xyxy)

        if fresh:
            return self._on_detection(frame_bgr, fresh, now_s)
        if self.config.policy == "none" or not self._held_boxes:
            self._release()
            return TrackStep(Decision.CLEAR, ())
        if self.config.policy == "hold":
            return self._hold_by_count()
        return self._hold_by_similarity(frame_bgr, now_s)

    def mark_blanked(self) -> None:
        """Count a frame that was blanked because its detection failed."""
        self._frame_index += 1

    def reset(self) -> None:
        """Forget every held box, as at the start of a new stream."""
        self._release()
        self._frame_index = -1

    def _on_detection(
        self, frame_bgr: np.ndarray, fresh: tuple[BoxXYXY, ...], now_s: float
    ) -> TrackStep:
        if self.config.policy == "none":
            return TrackStep(Decision.MASKED, fresh)

        window_start = self._frame_index - self.config.union_frames
        while self._recent and self._recent[0][0] < window_start:
            self._recent.popleft()
        earlier = [box for _, boxes in self._recent for box in boxes]
        merged = merge_boxes(fresh, earlier)
        if self.config.union_frames > 0:
            self._recent.append((self._frame_index, fresh))

        self._held_boxes = merged
        self._detected_index = self._frame_index
        self._detected_s = now_s
        if self.config.policy == "hold_sim":
            self._reference_grey = small_grey(frame_bgr, self.config.ssim_width)
            self._reference_width_px = frame_bgr.shape[1]
        return TrackStep(Decision.MASKED, merged)

    def _hold_by_count(self) -> TrackStep:
        age = self._frame_index - self._detected_index
        if age > self.config.hold_frames:
            self._release()
            return TrackStep(Decision.CLEAR, ())
        return TrackStep(Decision.HELD, self._held_boxes, mask_age_frames=age)

    def _hold_by_similarity(self, frame_bgr: np.ndarray, now_s: float) -> TrackStep:
        age = self._frame_index - self._detected_index
        within_caps = age <= self.config.max_frames and (
            now_s - self._detected_s <= self.config.max_s
        )
        similarity = None
        if within_caps and self._reference_grey is not None:
            region = None
            if self.config.ssim_context is not None:
                region = region_mask(
                    self._held_boxes,
                    self.config.ssim_context,
                    self._reference_width_px,
                    self._reference_grey.shape,
                )
            similarity = ssim_against(
                self._reference_grey, frame_bgr, self.config.ssim_width, region
            )
        if similarity is None or similarity < self.config.sim_threshold:
            self._release()
            return TrackStep(Decision.CLEAR, (), similarity=similarity)
        return TrackStep(
            Decision.HELD, self._held_boxes, mask_age_frames=age, similarity=similarity
        )

    def _release(self) -> None:
        """End a hold, so that the next hold starts only after a fresh detection."""
        self._held_boxes = ()
        self._reference_grey = None
        self._recent.clear()


def _as_box(box: Sequence[float]) -> BoxXYXY:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def boxes_overlap(a: BoxXYXY, b: BoxXYXY) -> bool:
    """True when the boxes share area or touch along an edge."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def enclosing_box(a: BoxXYXY, b: BoxXYXY) -> BoxXYXY:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def merge_boxes(fresh: Sequence[BoxXYXY], earlier: Sequence[BoxXYXY]) -> tuple[BoxXYXY, ...]:
    """Replace every group of overlapping boxes by the box that encloses the group.

    Fresh boxes come first in the result. An earlier box that overlaps no other box is
    kept as it is, because the target may have moved away from it within the window.
    """
    merged: list[BoxXYXY] = []
    for box in [*fresh, *earlier]:
        current = box
        # An enclosing box may reach boxes that the original did not, so merge until stable.
        changed = True
        while changed:
            changed = False
            for index, other in enumerate(merged):
                if boxes_overlap(current, other):
                    current = enclosing_box(current, other)
                    del merged[index]
                    changed = True
                    break
        merged.append(current)
    return tuple(merged)


def small_grey(frame: np.ndarray, width: int) -> np.ndarray:
    """Convert `frame` to float32 grey in [0, 1], resized to `width` columns.

    Accepts grey (H×W), BGR or BGRA frames of any integer dtype, or floats in [0, 1].
    """
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        supported = frame.dtype in (np.uint8, np.uint16, np.float32)
        work = frame if supported else frame.astype(np.float32)
        grey = cv2.cvtColor(work, code)
    elif frame.ndim == 2:
        grey = frame
    else:
        raise ValueError(f"frame: expected H×W or H×W×C, got shape {frame.shape}")

    scale = float(np.iinfo(frame.dtype).max) if np.issubdtype(frame.dtype, np.integer) else 1.0
    height_px, width_px = grey.shape
    target_h = max(_MIN_SSIM_HEIGHT, round(height_px * width / max(width_px, 1)))
    small = cv2.resize(grey.astype(np.float32), (width, target_h), interpolation=cv2.INTER_AREA)
    return small / np.float32(scale)


def region_mask(
    boxes_xyxy: Sequence[BoxXYXY], context: float, frame_width_px: int, shape_hw: tuple[int, ...]
) -> np.ndarray:
    """Return a boolean mask of `shape_hw` that marks the boxes grown by `context` of their sides.

    `boxes_xyxy` are in pixels of the full frame, `frame_width_px` wide.
    """
    height, width = shape_hw[:2]
    scale = width / max(frame_width_px, 1)
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes_xyxy:
        dx = (x2 - x1) * context
        dy = (y2 - y1) * context
        left = max(0, math.floor((x1 - dx) * scale))
        top = max(0, math.floor((y1 - dy) * scale))
        right = min(width, math.ceil((x2 + dx) * scale))
        bottom = min(height, math.ceil((y2 + dy) * scale))
        mask[top:bottom, left:right] = True
    return mask


def ssim_against(
    reference_grey: np.ndarray,
    frame: np.ndarray,
    width: int,
    region: np.ndarray | None = None,
) -> float | None:
    """Compute the SSIM of `frame` against a `small_grey` reference.

    With `region` (a boolean mask of the reference's shape) the SSIM map is averaged over
    the marked pixels only. Returns None when the frame's aspect gives the small copy
    another shape than the reference, or when `region` marks no pixel.
    """
    candidate = small_grey(frame, width)
    if candidate.shape != reference_grey.shape:
        return None
    if region is None:
        return float(structural_similarity(reference_grey, candidate, data_range=1.0))
    if not region.any():
        return None
    _, ssim_map = structural_similarity(reference_grey, candidate, data_range=1.0, full=True)
    return float(ssim_map[region].mean())
