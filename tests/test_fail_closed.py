"""Fail-closed behaviour: a detector that breaks never lets a raw image out."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from service.config import Settings


def _noise_jpeg(seed: int = 0, height: int = 240, width: int = 320) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 226, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), image


def _is_blanked(content: bytes) -> bool:
    """Black apart from the white notice text: no trace of the noise image survives."""
    pixels = np.asarray(Image.open(io.BytesIO(content)).convert("L")).astype(int)
    dark = pixels < 40
    bright = pixels > 215
    return bool(dark.mean() > 0.85 and (dark | bright).mean() > 0.93)


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"deadline_ms": 300.0, "max_wait_ms": 1.0}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


FAULTS = ["raise", "hang", "slow", "nan", "not_numbers", "flood", "wrong_length"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_fault_gives_503_never_raw(serve, faulty_detector, fault: str) -> None:
    body, _ = _noise_jpeg()
    async with serve(_settings(), detector=faulty_detector) as served:
        faulty_detector.fault = fault
        response = await served.client.post(
            "/v1/mask", content=body, headers={"Content-Type": "image/jpeg"}
        )
        faulty_detector.release()
        rejected = sum(
            [
                await served.metric("sonomask_rejections_total", {"reason": reason})
                for reason in ("deadline", "detector_error", "invalid_output")
            ]
        )
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "could not be checked" in response.json()["detail"]
    assert response.headers["content-type"].startswith("application/json")
    assert rejected == 1


@pytest.mark.parametrize("fault", FAULTS)
async def test_fault_with_blank_option_gives_blanked_image(
    serve, faulty_detector, fault: str
) -> None:
    body, _ = _noise_jpeg(seed=1)
    async with serve(_settings(), detector=faulty_detector) as served:
        faulty_detector.fault = fault
        response = await served.client.post(
            "/v1/mask?on_failure=blank", content=body, headers={"Content-Type": "image/jpeg"}
        )
        faulty_detector.release()
        blanked = await served.metric(
            "sonomask_frames_total", {"source": "rest", "decision": "blanked"}
        )
    assert response.status_code == 200
    assert response.headers["X-Sonomask-Decision"] == "blanked"
    assert response.headers["X-Sonomask-Blanked"]
    assert _is_blanked(response.content)
    assert blanked == 1


async def test_out_of_frame_boxes_are_clipped_and_masked(serve, faulty_detector) -> None:
    body, original = _noise_jpeg(seed=2)
    async with serve(_settings(mask_margin=0.0), detector=faulty_detector) as served:
        faulty_detector.fault = "outside"
        response = await served.client.post(
            "/v1/mask", content=body, headers={"Content-Type": "image/jpeg"}
        )
    masked = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
    height, width = original.shape[:2]
    # The inverted box (0.2w..0.6w, -50..0.6h) is clipped to the frame and filled black.
    inside = masked[2 : int(height * 0.6) - 2, int(width * 0.2) + 2 : int(width * 0.6) - 2]
    assert response.status_code == 200
    assert response.headers["X-Sonomask-Decision"] == "masked"
    assert inside.max() < 20


async def test_queue_full_answers_503_with_retry_after(serve, faulty_detector) -> None:
    body, _ = _noise_jpeg(seed=3)
    settings = _settings(queue_limit=2, max_batch_size=1, deadline_ms=3000.0)
    async with serve(settings, detector=faulty_detector) as served:
        faulty_detector.fault = "hang"
        requests = [
            served.client.post("/v1/mask", content=body, headers={"Content-Type": "image/jpeg"})
            for _ in range(6)
        ]
        tasks = [asyncio.create_task(request) for request in requests]
        done, _ = await asyncio.wait(tasks, timeout=2.0)
        early = [task.result() for task in done]
        faulty_detector.release()
        rest = await asyncio.gather(*(task for task in tasks if task not in done))
        queue_full = await served.metric("sonomask_rejections_total", {"reason": "queue_full"})
    responses = early + list(rest)
    assert all(r.status_code in (200, 503) for r in responses)
    full = [r for r in early if r.status_code == 503]
    assert full, "no request was refused while the queue was full"
    assert all("queue_full" in r.json()["detail"] for r in full)
    assert all(r.headers["Retry-After"] for r in full)
    assert queue_full == len(full)


async def test_recovers_after_fault(serve, faulty_detector) -> None:
    body, _ = _noise_jpeg(seed=4)
    async with serve(_settings(), detector=faulty_detector) as served:
        faulty_detector.fault = "raise"
        failed = await served.client.post(
            "/v1/mask", content=body, headers={"Content-Type": "image/jpeg"}
        )
        faulty_detector.fault = None
        recovered = await served.client.post(
            "/v1/mask", content=body, headers={"Content-Type": "image/jpeg"}
        )
    assert failed.status_code == 503
    assert recovered.status_code == 200
    assert recovered.headers["X-Sonomask-Decision"] == "clear"
