"""The hot path with a real exported model: the batching window and the served backend."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from service.codecs import png_has_only_pixel_chunks
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


def _png(array: np.ndarray, text: str | None = None) -> bytes:
    buffer = io.BytesIO()
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", text)
    Image.fromarray(array).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _ramp_rgb() -> np.ndarray:
    y, x = np.mgrid[0:240, 0:320]
    return np.dstack([x * 255 // 320, y * 255 // 240, (x + y) % 256]).astype(np.uint8)


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"IHDR", b"IDAT", b"IDAT", b"IEND"], True),
        ([b"IHDR", b"gAMA", b"PLTE", b"tRNS", b"IDAT", b"IEND"], True),
        ([b"IHDR", b"tEXt", b"IDAT", b"IEND"], False),
        ([b"IHDR", b"eXIf", b"IDAT", b"IEND"], False),
        ([b"IHDR", b"acTL", b"IDAT", b"fdAT", b"IEND"], False),
        ([b"IHDR", b"IDAT"], False),
    ],
)
def test_pixel_only_png_chunks(chunks: list[bytes], expected: bool) -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"".join(
        len(b"abc").to_bytes(4, "big") + kind + b"abc" + b"\0\0\0\0" for kind in chunks
    )
    assert png_has_only_pixel_chunks(data) is expected


def test_bytes_after_iend_are_not_pixel_only() -> None:
    data = _png(_ramp_rgb())
    assert png_has_only_pixel_chunks(data)
    assert not png_has_only_pixel_chunks(data + b"hidden")


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


async def test_clear_png_returned_as_sent(serve, untrained_model_path: Path) -> None:
    settings = Settings(
        model_path=untrained_model_path, device="cpu", selftest_require_detection=False
    )
    plain = _png(_ramp_rgb())
    with_text = _png(_ramp_rgb(), text="operator note")
    async with serve(settings) as served:
        responses = [
            await served.client.post(
                "/v1/mask", content=body, headers={"Content-Type": "image/png"}
            )
            for body in (plain, with_text)
        ]
    for response in responses:
        assert response.status_code == 200
        assert response.headers["X-Sonomask-Decision"] == "clear"
    assert responses[0].content == plain
    # The text chunk makes the service encode the pixels again, without the text.
    assert b"operator note" not in responses[1].content
    returned = np.asarray(Image.open(io.BytesIO(responses[1].content)))
    assert np.array_equal(returned, _ramp_rgb())
