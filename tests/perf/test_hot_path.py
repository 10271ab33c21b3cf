"""The hot path with a real exported model: the batching window and the served backend."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from service.config import Settings
from service.detection.batcher import Batcher
from service.detection.runtimes import OnnxRuntimeDetector


def _frame(value: int = 90) -> np.ndarray:
    return np.full((240, 320, 3), value, dtype=np.uint8)


async def test_lone_frame_skips_batch_window(untrained_with_onnx: Path) -> None:
    detector = OnnxRuntimeDetector(untrained_with_onnx.with_suffix(".onnx"))
    # A window far longer than the deadline: a frame held for it would miss the deadline.
    batcher = Batcher(detector, max_batch_size=8, max_wait_s=60.0)
    batcher.start()
    try:
        result = await batcher.detect(_frame(), deadline_s=time.monotonic() + 20)
    finally:
        batcher.stop()
    assert result.batch_size == 1


async def test_sparse_frames_skip_batch_window(untrained_with_onnx: Path) -> None:
    detector = OnnxRuntimeDetector(untrained_with_onnx.with_suffix(".onnx"))
    # Frames 1.2 s apart never fill a 1 s window, so each must run at once: a frame held
    # for the window would miss its 0.8 s deadline.
    batcher = Batcher(detector, max_batch_size=8, max_wait_s=1.0)
    batcher.start()
    try:
        for value in (10, 100, 200):
            result = await batcher.detect(_frame(value), deadline_s=time.monotonic() + 0.8)
            assert result.batch_size == 1
            await asyncio.sleep(1.2)
    finally:
        batcher.stop()


async def test_burst_waits_for_batch_to_fill(untrained_with_onnx: Path) -> None:
    detector = OnnxRuntimeDetector(untrained_with_onnx.with_suffix(".onnx"))
    batcher = Batcher(detector, max_batch_size=4, max_wait_s=5.0)
    batcher.start()
    try:
        deadline_s = time.monotonic() + 30
        # The first burst teaches the batcher that frames arrive close together.
        await asyncio.gather(*(batcher.detect(_frame(v), deadline_s=deadline_s) for v in range(4)))
        first = asyncio.create_task(batcher.detect(_frame(1), deadline_s=deadline_s))
        await asyncio.sleep(0.05)
        rest = [batcher.detect(_frame(v), deadline_s=deadline_s) for v in range(2, 5)]
        results = await asyncio.gather(first, *rest)
    finally:
        batcher.stop()
    assert [result.batch_size for result in results] == [4, 4, 4, 4]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_served_app_runs_exported_model(serve, untrained_with_onnx: Path) -> None:
    settings = Settings(
        model_path=untrained_with_onnx, device="cpu", selftest_require_detection=False
    )
    async with serve(settings) as served:
        ready = (await served.client.get("/readyz")).json()
        image = np.dstack([np.full((240, 320), v, np.uint8) for v in (40, 120, 200)])
        response = await served.client.post(
            "/v1/mask", content=_png(image), headers={"Content-Type": "image/png"}
        )
    assert ready["model"]["backend"] in {"onnx", "openvino"}
    assert response.status_code == 200
    assert response.headers["X-Sonomask-Decision"] == "clear"
    returned = np.asarray(Image.open(io.BytesIO(response.content)))
    assert np.array_equal(returned, image)
