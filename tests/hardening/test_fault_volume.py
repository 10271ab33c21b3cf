"""Fault injection at volume over REST and streams: every fault, many noise frames, no raw frame."""

from __future__ import annotations

from collections import Counter

import aioice.ice
import httpx
import numpy as np
import pytest

from scripts.hardening.fault_volume import (
    INJECTED_BOX_XYXY,
    RecordingDetector,
    counters_add_up,
    judge,
    noise_png,
    run_fault_volume,
)
from scripts.hardening.stream_client import capture_stream
from service.detection.model import Detection


def _settings(make_settings):
    return make_settings(
        deadline_ms=300.0, max_wait_ms=2.0, max_batch_size=4, queue_limit=16, mask_margin=0.0
    )


async def _run(serve, make_settings, faulty_detector, frames_per_phase: int):
    recorder = RecordingDetector(faulty_detector)
    async with serve(_settings(make_settings), detector=recorder) as served:
        return await run_fault_volume(
            served.client, served.app, faulty_detector, recorder, frames_per_phase=frames_per_phase
        )


async def test_faults_never_leak_raw_frames(serve, make_settings, faulty_detector) -> None:
    report = await _run(serve, make_settings, faulty_detector, frames_per_phase=120)

    assert report.frames_sent == 9 * 120
    assert report.raw_frames == 0
    assert report.violations == []
    assert counters_add_up(report) == []
    # Each phase must have produced its outcome, or the run proved nothing about it.
    assert report.by_phase["none+box"] == {"masked": 120}
    assert report.by_phase["none"] == {"clear": 120}
    assert report.by_phase["outside+box"] == {"masked": 120}
    for phase in ("raise+box", "nan+box", "flood+box", "wrong_length+box", "hang+box"):
        outcomes = report.by_phase[phase]
        assert set(outcomes) <= {"blanked", "refused"}, phase
        assert outcomes.get("blanked", 0) > 0, phase
        assert outcomes.get("refused", 0) > 0, phase
    # Slow detections in time may clear a frame. A late one must blank or refuse it.
    assert set(report.by_phase["slow"]) <= {"clear", "blanked", "refused"}


@pytest.mark.slow
async def test_faults_at_full_volume(serve, make_settings, faulty_detector) -> None:
    report = await _run(serve, make_settings, faulty_detector, frames_per_phase=600)

    assert report.frames_sent == 9 * 600
    assert report.raw_frames == 0
    assert report.violations == []
    assert counters_add_up(report) == []


def test_judge_flags_raw_frames(faulty_detector) -> None:
    """The pixel check itself: an unmasked frame counts as raw whatever its decision header."""
    recorder = RecordingDetector(faulty_detector)
    body, pixels = noise_png(seed=7)
    for decision in ("masked", "blanked", "clear"):
        response = httpx.Response(200, headers={"X-Sonomask-Decision": decision}, content=body)
        _, violation, raw = judge(response, pixels, recorder)
        assert violation is not None, decision
        assert raw, decision


def test_judge_accepts_clear_after_empty_answer(faulty_detector) -> None:
    recorder = RecordingDetector(faulty_detector)
    body, pixels = noise_png(seed=8)
    recorder.predict([np.ascontiguousarray(pixels[..., ::-1])])
    response = httpx.Response(200, headers={"X-Sonomask-Decision": "clear"}, content=body)
    assert judge(response, pixels, recorder) == ("clear", None, False)


# Faults switched every 0.8 s over one stream, with a normal spell between any two. "outside"
# is left out because its boxes are elsewhere in the frame. The REST run covers it.
STREAM_SCHEDULE = [None, "raise", None, "nan", None, "flood", None, "wrong_length", None, "slow"]
STREAM_SCHEDULE += [None, "hang"]
STREAM_STEP_S = 0.8


def _covered(frame_bgr: np.ndarray) -> bool:
    """True when the injected box is black, or the whole frame is (a blanked frame)."""
    grey = frame_bgr.mean(axis=2)
    x1, y1, x2, y2 = (int(v) for v in INJECTED_BOX_XYXY)
    inside = grey[y1 + 6 : y2 - 6, x1 + 6 : x2 - 6]
    return bool(inside.mean() < 40 or (grey < 40).mean() > 0.8)


async def test_stream_faults_never_leak_raw_frames(
    serve, make_settings, faulty_detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    faulty_detector.boxes = [Detection(0, "transverse", 0.9, INJECTED_BOX_XYXY)]
    faulty_detector.delay_s = 0.5

    def switch_fault(elapsed_s: float) -> None:
        step = min(int(elapsed_s / STREAM_STEP_S), len(STREAM_SCHEDULE) - 1)
        faulty_detector.fault = STREAM_SCHEDULE[step]

    async with serve(_settings(make_settings), detector=faulty_detector) as served:
        capture = await capture_stream(
            served.client, STREAM_STEP_S * len(STREAM_SCHEDULE), during=switch_fault
        )
        faulty_detector.release()
        counted = {
            decision: await served.metric(
                "sonomask_frames_total", {"source": "stream", "decision": decision}
            )
            for decision in ("masked", "held", "clear", "blanked")
        }

    raw = [index for index, frame in enumerate(capture.frames_bgr) if not _covered(frame)]
    decisions = Counter(str(message["decision"]) for message in capture.messages)
    assert len(capture.frames_bgr) > 60, "too few frames came back to judge the stream"
    assert raw == []
    assert set(decisions) <= {"masked", "held", "blanked"}
    assert decisions["masked"] > 0
    assert decisions["blanked"] > 0
    assert counted["clear"] == 0
    assert sum(counted.values()) >= len(capture.messages)
    assert counted["blanked"] >= decisions["blanked"]


def test_covered_rejects_raw_noise() -> None:
    _, pixels = noise_png(seed=9)
    frame_bgr = np.ascontiguousarray(pixels[..., ::-1])
    masked = frame_bgr.copy()
    x1, y1, x2, y2 = (int(v) for v in INJECTED_BOX_XYXY)
    masked[y1:y2, x1:x2] = 0
    assert not _covered(frame_bgr)
    assert _covered(masked)
    assert _covered(np.zeros_like(frame_bgr))
