"""Per-stream mask tracking: the decision each output frame gets, and the hold policies."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Decision(StrEnum):
    """What happened to one output frame."""

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
