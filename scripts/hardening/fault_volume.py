"""Fault injection at volume over REST: many noise frames through a detector that misbehaves.

Each phase switches the fault-injecting detector to one behaviour and sends a batch of
unique noise PNGs. The behaviours are: normal with a box, normal with no box, raise, hang,
slow, non-finite boxes, boxes off the frame, a flood of boxes, and too few results. Every
response is checked on its pixels:

- `clear` is legitimate only for a frame the detector answered normally with no box;
- `masked` must carry a solid mask, and the injected box must be black;
- `blanked` must be black apart from the notice;
- a 503 must carry Retry-After and no image.

A raw frame is a 200 whose pixels equal the noise that was sent, without a legitimate
`clear` decision. The run also checks that the decision and rejection counters on
/metrics add up to the frames sent. The detector records what it returned for each frame
by a hash of the frame's pixels; PNG is lossless, so the client can compute the same hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx
import numpy as np
from PIL import Image

from service.detection.model import Detection, ModelInfo

FRAME_WH = (160, 120)
# The box the detector reports in the phases that have one, well inside the frame.
INJECTED_BOX_XYXY = (40.0, 30.0, 120.0, 90.0)
PIPELINE_REASONS = ("not_ready", "queue_full", "deadline", "detector_error", "invalid_output")


class FaultInjector(Protocol):
    """The fault-injecting detector: tests/conftest.py's FaultyDetector has this shape."""

    fault: str | None
    delay_s: float
    boxes: list[Detection]

    @property
    def info(self) -> ModelInfo: ...

    def warmup(self) -> None: ...

    def release(self) -> None: ...

    def predict(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]: ...


def frame_key(frame_bgr: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(frame_bgr).tobytes(), digest_size=16).digest()


class RecordingDetector:
    """Wrap a fault injector and record, per frame, the fault and whether it had boxes."""

    def __init__(self, inner: FaultInjector) -> None:
        self.inner = inner
        self.answers: dict[bytes, tuple[str | None, bool]] = {}

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def warmup(self) -> None:
        self.inner.warmup()

    def predict(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        label = (self.inner.fault, bool(self.inner.boxes))
        for frame in frames:
            self.answers[frame_key(frame)] = label
        return self.inner.predict(frames)

    def answered_clear(self, frame_bgr: np.ndarray) -> bool:
        """True when the detector returned no box and no fault for this frame."""
        fault, had_boxes = self.answers.get(frame_key(frame_bgr), ("unseen", True))
        return fault in (None, "slow") and not had_boxes


@dataclass(frozen=True)
class Phase:
    fault: str | None
    with_box: bool
    delay_s: float = 0.5

    @property
    def name(self) -> str:
        return f"{self.fault or 'none'}{'+box' if self.with_box else ''}"


# "slow" sleeps long enough that, with batches of 4 and 16 clients, some queued frames pass
# the 300 ms deadline while others get their detections in time, so both paths run.
PHASES = (
    Phase(None, with_box=True),
    Phase(None, with_box=False),
    Phase("raise", with_box=True),
    Phase("nan", with_box=True),
    Phase("outside", with_box=True),
    Phase("flood", with_box=True),
    Phase("wrong_length", with_box=True),
    Phase("slow", with_box=False, delay_s=0.07),
    Phase("hang", with_box=True),
)


@dataclass
class FaultReport:
    """Counts of frames sent and outcomes returned, and every response that broke a rule."""

    frames_sent: int = 0
    by_phase: dict[str, dict[str, int]] = field(default_factory=dict)
    decisions: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    raw_frames: int = 0
    violations: list[str] = field(default_factory=list)
    counted_frames: dict[str, float] = field(default_factory=dict)
    counted_rejections: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decisions"] = dict(self.decisions)
        data["violations"] = self.violations[:20]
        data["violation_count"] = len(self.violations)
        return data


def noise_png(seed: int) -> tuple[bytes, np.ndarray]:
    """Return a noise PNG with values 30..225 and its RGB pixels. Noise never looks masked."""
    width, height = FRAME_WH
    pixels = np.random.default_rng(seed).integers(30, 226, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), pixels


def _dark_fraction(pixels: np.ndarray) -> float:
    return float((pixels.max(axis=2) < 20).mean())


def _is_blanked(pixels: np.ndarray) -> bool:
    grey = pixels.mean(axis=2)
    dark = grey < 40
    bright = grey > 215
    return bool(dark.mean() > 0.85 and (dark | bright).mean() > 0.93)


def judge(
    response: httpx.Response, sent_rgb: np.ndarray, detector: RecordingDetector
) -> tuple[str, str | None, bool]:
    """Classify one response; return (outcome, violation or None, whether it was a raw frame)."""
    if response.status_code == 503:
        if not response.headers.get("Retry-After"):
            return "refused", "503 without Retry-After", False
        if not response.headers.get("content-type", "").startswith("application/json"):
            return "refused", "503 with a body that is not JSON", False
        return "refused", None, False
    if response.status_code != 200:
        return f"status {response.status_code}", f"unexpected status {response.status_code}", False

    decision = response.headers.get("X-Sonomask-Decision", "missing")
    pixels = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    if pixels.shape != sent_rgb.shape:
        return decision, f"{decision} frame came back as {pixels.shape}", False
    unchanged = bool(np.array_equal(pixels, sent_rgb))
    legit_clear = detector.answered_clear(np.ascontiguousarray(sent_rgb[..., ::-1]))

    if decision == "clear":
        if not legit_clear:
            return decision, "clear decision for a frame the detector did not clear", unchanged
        if not unchanged:
            return decision, "clear frame was altered", False
        return decision, None, False
    if unchanged:
        return decision, f"{decision} decision but the pixels are the raw input", True
    if decision == "blanked" and not _is_blanked(pixels):
        return decision, "blanked frame still shows the image", False
    if decision == "masked":
        x1, y1, x2, y2 = (int(v) for v in INJECTED_BOX_XYXY)
        fault, had_boxes = detector.answers.get(frame_key(sent_rgb[..., ::-1]), ("unseen", False))
        if fault is None and had_boxes and pixels[y1:y2, x1:x2].max() >= 20:
            return decision, "masked frame shows pixels inside the detected box", False
        if _dark_fraction(pixels) < 0.05:
            return decision, "masked frame has no solid mask", False
    if decision not in ("masked", "blanked"):
        return decision, f"unexpected decision {decision!r} on REST", False
    return decision, None, False


async def _wait_idle(app: Any, timeout_s: float = 40.0) -> None:
    """Wait until the batcher has no batch running and nothing queued."""
    deadline_s = time.monotonic() + timeout_s
    batcher = app.state.batcher
    while time.monotonic() < deadline_s:
        if batcher.busy_for_s() == 0.0 and batcher.queue_depth == 0:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the batcher did not go idle after a phase")


async def run_fault_volume(
    client: httpx.AsyncClient,
    app: Any,
    injector: FaultInjector,
    recorder: RecordingDetector,
    *,
    frames_per_phase: int,
    concurrency: int = 16,
    phases: Sequence[Phase] = PHASES,
) -> FaultReport:
    """Send `frames_per_phase` noise frames through each phase and judge every response.

    `app` must run with `recorder` (wrapping `injector`) as its detector.
    """
    report = FaultReport()
    started_s = time.monotonic()
    seed = 0
    for phase in phases:
        await _wait_idle(app)
        injector.fault = phase.fault
        injector.delay_s = phase.delay_s
        injector.boxes = (
            [Detection(0, "transverse", 0.9, INJECTED_BOX_XYXY)] if phase.with_box else []
        )
        frames = [(index, *noise_png(index)) for index in range(seed, seed + frames_per_phase)]
        seed += frames_per_phase
        outcomes = await _send_phase(client, phase, frames, recorder, report, concurrency)
        if phase.fault == "hang":
            injector.release()
        report.by_phase[phase.name] = dict(outcomes)

    await _wait_idle(app)
    metrics_text = (await client.get("/metrics")).text
    report.counted_frames = _samples(metrics_text, "sonomask_frames_total", "source", "rest")
    report.counted_rejections = _samples(metrics_text, "sonomask_rejections_total", None, None)
    report.seconds = time.monotonic() - started_s
    return report


async def _send_phase(
    client: httpx.AsyncClient,
    phase: Phase,
    frames: list[tuple[int, bytes, np.ndarray]],
    recorder: RecordingDetector,
    report: FaultReport,
    concurrency: int,
) -> Counter[str]:
    """Send the frames with `concurrency` workers, judge each response, add it to `report`."""
    outcomes: Counter[str] = Counter()
    pending = list(reversed(frames))

    async def worker() -> None:
        while pending:
            index, body, pixels = pending.pop()
            on_failure = "blank" if index % 2 else "error"
            response = await client.post(
                f"/v1/mask?on_failure={on_failure}",
                content=body,
                headers={"Content-Type": "image/png"},
            )
            outcome, violation, raw = judge(response, pixels, recorder)
            outcomes[outcome] += 1
            report.frames_sent += 1
            if outcome == "refused":
                report.refused += 1
            else:
                report.decisions[outcome] += 1
            if raw:
                report.raw_frames += 1
            if violation is not None:
                report.violations.append(f"{phase.name} frame {index}: {violation}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def _samples(text: str, name: str, label: str | None, value: str | None) -> dict[str, float]:
    """Sum the samples of counter `name` by their `decision` or `reason` label.

    With `label` set, only samples whose `label` equals `value` count.
    """
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, number = line.rpartition(" ")
        labels = dict(
            part.split("=", 1) for part in head[len(name) + 1 : -1].split(",") if "=" in part
        )
        labels = {key: raw.strip('"') for key, raw in labels.items()}
        if label is not None and labels.get(label) != value:
            continue
        key = labels.get("decision") or labels.get("reason") or ""
        samples[key] = samples.get(key, 0.0) + float(number)
    return samples


def counters_add_up(report: FaultReport) -> list[str]:
    """Compare /metrics with the responses; return one line for each mismatch."""
    problems = []
    for decision in ("masked", "held", "clear", "blanked"):
        counted = report.counted_frames.get(decision, 0.0)
        seen = report.decisions.get(decision, 0)
        if counted != seen:
            problems.append(f"frames_total{{decision={decision}}} is {counted:g}, responses {seen}")
    rejected = sum(report.counted_rejections.get(reason, 0.0) for reason in PIPELINE_REASONS)
    if rejected != report.refused:
        problems.append(f"pipeline rejections total {rejected:g}, 503 responses {report.refused}")
    counted_total = sum(report.counted_frames.values()) + rejected
    if counted_total != report.frames_sent:
        problems.append(f"counters add up to {counted_total:g}, frames sent {report.frames_sent}")
    return problems


# Faults switched every 0.8 s over one stream, with a normal spell between any two. "outside"
# is left out because its boxes are elsewhere in the frame. The REST run covers it.
STREAM_SCHEDULE: tuple[str | None, ...] = (
    None, "raise", None, "nan", None, "flood", None, "wrong_length", None, "slow", None, "hang",
)  # fmt: skip
STREAM_STEP_S = 0.8


def stream_frame_covered(frame_bgr: np.ndarray) -> bool:
    """True when the injected box is black, or the whole frame is (a blanked frame)."""
    grey = frame_bgr.mean(axis=2)
    x1, y1, x2, y2 = (int(v) for v in INJECTED_BOX_XYXY)
    # VP8 blurs the mask's edges, so only the box's inner part must be black.
    inside = grey[y1 + 6 : y2 - 6, x1 + 6 : x2 - 6]
    return bool(inside.mean() < 40 or (grey < 40).mean() > 0.8)


@dataclass
class StreamFaultReport:
    """Frames sent and returned over one faulted stream, their decisions, and raw frames."""

    frames_sent: int
    frames_returned: int
    messages: int
    decisions: dict[str, int]
    counted_frames: dict[str, float]
    raw_frames: int
    seconds: float


async def run_stream_faults(
    client: httpx.AsyncClient, injector: FaultInjector, *, rounds: int = 1
) -> StreamFaultReport:
    """Stream noise while the detector walks `STREAM_SCHEDULE` `rounds` times, judge each frame.

    The client process must offer only 127.0.0.1 as its ICE host candidate.
    """
    from scripts.hardening.stream_client import capture_stream

    injector.boxes = [Detection(0, "transverse", 0.9, INJECTED_BOX_XYXY)]
    injector.delay_s = 0.5
    # A hang lasts until release() at the end, so only the last round has one.
    without_hang = tuple(fault for fault in STREAM_SCHEDULE if fault != "hang")
    schedule = without_hang * (rounds - 1) + STREAM_SCHEDULE

    def switch_fault(elapsed_s: float) -> None:
        step = min(int(elapsed_s / STREAM_STEP_S), len(schedule) - 1)
        injector.fault = schedule[step]

    started_s = time.monotonic()
    capture = await capture_stream(client, STREAM_STEP_S * len(schedule), during=switch_fault)
    injector.release()
    metrics_text = (await client.get("/metrics")).text
    raw = [frame for frame in capture.frames_bgr if not stream_frame_covered(frame)]
    return StreamFaultReport(
        frames_sent=capture.frames_sent,
        frames_returned=len(capture.frames_bgr),
        messages=len(capture.messages),
        decisions=dict(Counter(str(message["decision"]) for message in capture.messages)),
        counted_frames=_samples(metrics_text, "sonomask_frames_total", "source", "stream"),
        raw_frames=len(raw),
        seconds=time.monotonic() - started_s,
    )
