"""Video files: mask every frame with the shared pipeline and one tracker, keeping size and rate.

`mask_video` decodes the input with PyAV, sends each frame through `FramePipeline.run` with
a `Tracker` for the whole file, and encodes the rendered frames. The tracker's clock is the
video's own (frame index / frame rate), so `max_s` caps a hold in video time however fast
the file is processed. Audio and subtitle streams are not copied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from service.masking import BoxXYXY
from service.pipeline import FrameOutcome, FramePipeline
from service.tracking import HoldConfig, Tracker, TrackStep

logger = logging.getLogger(__name__)

# Encoder and pixel format by output suffix. 4:2:0 needs even sides, so odd sizes use 4:4:4.
_ENCODERS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx-vp9",
}
OUTPUT_SUFFIXES = tuple(sorted(_ENCODERS))
DEFAULT_FPS = Fraction(25)


class VideoInputError(ValueError):
    """The input cannot be read as a video, or the output cannot be written in its format."""


@dataclass(frozen=True)
class FrameRecord:
    """The decision on one frame of a video, for reports and evaluation."""

    index: int
    decision: str
    boxes_xyxy: tuple[BoxXYXY, ...]
    mask_age_frames: int
    failure: str | None


@dataclass
class VideoReport:
    """The outcome of `mask_video` on one file: size, rate, decisions and per-frame records."""

    input: str
    output: str | None
    size_wh: tuple[int, int]
    fps: float
    frames: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    model_id: str = ""
    hold_config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    per_frame: list[FrameRecord] = field(default_factory=list)

    def as_dict(self, *, with_frames: bool = True) -> dict[str, Any]:
        report = asdict(self)
        report["size_wh"] = list(self.size_wh)
        if not with_frames:
            del report["per_frame"]
        return report


class VideoClockTracker:
    """A `Tracker` wrapper that passes the video's timestamps instead of the wall clock."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.video_time_s = 0.0

    def update(
        self, frame_bgr: np.ndarray, boxes_xyxy: Sequence[BoxXYXY], now_s: float
    ) -> TrackStep:
        return self.tracker.update(frame_bgr, boxes_xyxy, self.video_time_s)

    def mark_blanked(self) -> None:
        self.tracker.mark_blanked()


@dataclass(frozen=True)
class DecodedFrame:
    index: int
    time_s: float
    image_bgr: np.ndarray


@contextmanager
def open_video(path: Path) -> Iterator[tuple[Any, Any]]:
    """Open a video file and yield its container and first video stream."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoInputError(f"cannot open {path} as a video: {exc}") from exc
    try:
        if not container.streams.video:
            raise VideoInputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def frame_rate_of(stream: Any) -> Fraction:
    """Return the stream's average frame rate, else its guessed rate, else 25 fps."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return DEFAULT_FPS


def read_frames(path: Path) -> Generator[DecodedFrame, None, None]:
    """Decode every frame of the first video stream as BGR uint8, with its index and time."""
    with open_video(path) as (container, stream):
        fps = frame_rate_of(stream)
        try:
            for index, frame in enumerate(container.decode(stream)):
                image = frame.to_ndarray(format="bgr24")
                yield DecodedFrame(index, float(index / fps), image)
        except av.FFmpegError as exc:
            raise VideoInputError(f"decoding {path} failed: {exc}") from exc


class VideoWriter:
    """Encode BGR frames at a fixed size and rate; the codec follows the file suffix."""

    def __init__(self, path: Path, size_wh: tuple[int, int], fps: Fraction) -> None:
        codec = _ENCODERS.get(path.suffix.lower())
        if codec is None:
            raise VideoInputError(
                f"unsupported output suffix {path.suffix!r}: expected one of "
                f"{', '.join(OUTPUT_SUFFIXES)}"
            )
        width, height = size_wh
        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), mode="w")
        stream = self._container.add_stream(codec, rate=fps)
        if not isinstance(stream, av.video.stream.VideoStream):
            raise VideoInputError(f"codec {codec} did not give a video stream")
        self._stream = stream
        self._stream.width = width
        self._stream.height = height
        even = width % 2 == 0 and height % 2 == 0
        self._stream.pix_fmt = "yuv420p" if even else "yuv444p"
        if codec == "libx264":
            self._stream.options = {"crf": "18", "preset": "veryfast"}
        self._size_wh = size_wh

    def write(self, image_bgr: np.ndarray) -> None:
        height, width = image_bgr.shape[:2]
        if (width, height) != self._size_wh:
            raise VideoInputError(
                f"frame size changed mid-video: expected {self._size_wh}, got {(width, height)}"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image_bgr), format="bgr24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def probe_video(path: Path) -> tuple[tuple[int, int], Fraction, int]:
    """Return the size, frame rate and container frame count (0 when unknown) of a video."""
    with open_video(path) as (_, stream):
        size_wh = (int(stream.codec_context.width), int(stream.codec_context.height))
        return size_wh, frame_rate_of(stream), int(stream.frames or 0)


async def mask_video(
    pipeline: FramePipeline,
    input_path: Path,
    output_path: Path | None,
    hold_config: HoldConfig,
    *,
    show_progress: bool = False,
    on_frame: Callable[[DecodedFrame, FrameOutcome], None] | None = None,
) -> VideoReport:
    """Mask every frame of `input_path` in order and write them to `output_path` (None: no file).

    Raises VideoInputError for an unreadable input or an unsupported output suffix.
    """
    started_s = time.monotonic()
    size_wh, fps, frame_count = await asyncio.to_thread(probe_video, input_path)
    report = VideoReport(
        input=str(input_path),
        output=str(output_path) if output_path is not None else None,
        size_wh=size_wh,
        fps=float(fps),
        model_id=pipeline.model_id,
        hold_config=asdict(hold_config),
    )
    tracker = VideoClockTracker(Tracker(hold_config))
    writer = VideoWriter(output_path, size_wh, fps) if output_path is not None else None
    decisions: Counter[str] = Counter()
    frames = read_frames(input_path)
    progress = tqdm(
        total=frame_count or None, unit="frame", desc=input_path.name, disable=not show_progress
    )
    try:
        while True:
            decoded = await asyncio.to_thread(next, frames, None)
            if decoded is None:
                break
            received_s = time.monotonic()
            tracker.video_time_s = decoded.time_s
            outcome = await pipeline.run(decoded.image_bgr, tracker=tracker)
            if writer is not None:
                rendered = await asyncio.to_thread(outcome.render, decoded.image_bgr)
                await asyncio.to_thread(writer.write, rendered)
            pipeline.record("video", outcome, received_s)
            decisions[outcome.decision.value] += 1
            report.per_frame.append(_record(decoded.index, outcome))
            if on_frame is not None:
                on_frame(decoded, outcome)
            progress.update(1)
    finally:
        progress.close()
        frames.close()
        if writer is not None:
            await asyncio.to_thread(writer.close)

    report.frames = len(report.per_frame)
    report.decisions = dict(decisions)
    report.seconds = time.monotonic() - started_s
    logger.info(
        "masked %d frames of %s in %.1f s: %s",
        report.frames,
        input_path.name,
        report.seconds,
        report.decisions,
    )
    return report


def _record(index: int, outcome: FrameOutcome) -> FrameRecord:
    return FrameRecord(
        index=index,
        decision=outcome.decision.value,
        boxes_xyxy=tuple(_rounded(box) for box in outcome.boxes_xyxy),
        mask_age_frames=outcome.mask_age_frames,
        failure=outcome.failure.value if outcome.failure is not None else None,
    )


def _rounded(box: BoxXYXY) -> BoxXYXY:
    x1, y1, x2, y2 = box
    return (round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))
