"""Fault injection at volume over REST and streams: every fault, many noise frames, no raw frame."""

from __future__ import annotations

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
    run_stream_faults,
    stream_frame_covered,
)


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


async def test_stream_faults_never_leak_raw_frames(
    serve, make_settings, faulty_detector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    async with serve(_settings(make_settings), detector=faulty_detector) as served:
        report = await run_stream_faults(served.client, faulty_detector)

    assert report.frames_returned > 60, "too few frames came back to judge the stream"
    assert report.raw_frames == 0
    assert set(report.decisions) <= {"masked", "held", "blanked"}
    assert report.decisions["masked"] > 0
    assert report.decisions["blanked"] > 0
    assert report.counted_frames["clear"] == 0
    assert sum(report.counted_frames.values()) >= report.messages
    assert report.counted_frames["blanked"] >= report.decisions["blanked"]


def test_covered_rejects_raw_noise() -> None:
    _, pixels = noise_png(seed=9)
    frame_bgr = np.ascontiguousarray(pixels[..., ::-1])
    masked = frame_bgr.copy()
    x1, y1, x2, y2 = (int(v) for v in INJECTED_BOX_XYXY)
    masked[y1:y2, x1:x2] = 0
    assert not stream_frame_covered(frame_bgr)
    assert stream_frame_covered(masked)
    assert stream_frame_covered(np.zeros_like(frame_bgr))
