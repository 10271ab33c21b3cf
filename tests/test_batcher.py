"""The dynamic batcher: grouping, deadlines, bounded queue and shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service.detection.batcher import (
    Batcher,
    BatcherStoppedError,
    DeadlineExceededError,
    DetectorFailedError,
    QueueFullError,
)
from service.detection.model import UltralyticsDetector
from service.metrics import Metrics


def _frame(value: int = 90) -> np.ndarray:
    return np.full((240, 320, 3), value, dtype=np.uint8)


async def test_real_model_batches_concurrent_frames(untrained_model_path: Path) -> None:
    detector = UltralyticsDetector(untrained_model_path, device="cpu")
    metrics = Metrics()
    batcher = Batcher(detector, max_batch_size=4, max_wait_s=0.2, metrics=metrics)
    batcher.start()
    try:
        deadline_s = time.monotonic() + 30
        results = await asyncio.gather(
            *(batcher.detect(_frame(v), deadline_s=deadline_s) for v in range(4))
        )
    finally:
        batcher.stop()
    assert [r.batch_size for r in results] == [4, 4, 4, 4]
    assert all(r.detections == [] for r in results)
    assert metrics.batch_size._sum.get() == 4  # one observation of a batch of four


async def test_expired_frames_are_not_run(faulty_detector) -> None:
    faulty_detector.fault = "slow"
    faulty_detector.delay_s = 0.3
    batcher = Batcher(faulty_detector, max_batch_size=1, max_wait_s=0.0)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.detect(_frame(), deadline_s=time.monotonic() + 5))
        await asyncio.sleep(0.05)  # the first frame is now in the model
        with pytest.raises(DeadlineExceededError):
            await batcher.detect(_frame(), deadline_s=time.monotonic() + 0.1)
        await first
        await asyncio.sleep(0.1)
    finally:
        batcher.stop()
    # The second frame's deadline passed while it waited, so the model ran only once.
    assert faulty_detector.calls == 1


async def test_queue_limit_rejects_at_once(faulty_detector) -> None:
    faulty_detector.fault = "hang"
    batcher = Batcher(faulty_detector, max_batch_size=1, max_wait_s=0.0, queue_limit=2)
    batcher.start()
    tasks = []
    try:
        tasks.append(asyncio.create_task(batcher.detect(_frame(), deadline_s=time.monotonic() + 5)))
        await asyncio.sleep(0.05)  # taken by the worker, which now hangs
        for _ in range(2):
            tasks.append(
                asyncio.create_task(batcher.detect(_frame(), deadline_s=time.monotonic() + 5))
            )
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(QueueFullError):
            await batcher.detect(_frame(), deadline_s=time.monotonic() + 5)
        assert time.monotonic() - started < 0.5
    finally:
        faulty_detector.release()
        await asyncio.gather(*tasks, return_exceptions=True)
        batcher.stop()


async def test_detector_error_reaches_every_caller(faulty_detector) -> None:
    faulty_detector.fault = "raise"
    metrics = Metrics()
    batcher = Batcher(faulty_detector, max_batch_size=4, max_wait_s=0.1, metrics=metrics)
    batcher.start()
    try:
        deadline_s = time.monotonic() + 5
        outcomes = await asyncio.gather(
            *(batcher.detect(_frame(), deadline_s=deadline_s) for _ in range(3)),
            return_exceptions=True,
        )
    finally:
        batcher.stop()
    assert all(isinstance(o, DetectorFailedError) for o in outcomes)
    assert metrics.detector_errors_total._value.get() == 1


async def test_stopped_batcher_rejects_frames(faulty_detector) -> None:
    batcher = Batcher(faulty_detector)
    batcher.start()
    batcher.stop()
    with pytest.raises(BatcherStoppedError):
        await batcher.detect(_frame(), deadline_s=time.monotonic() + 5)


def test_invalid_sizes_are_rejected(faulty_detector) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(faulty_detector, max_batch_size=0)
    with pytest.raises(ValueError, match="queue_limit"):
        Batcher(faulty_detector, queue_limit=0)
