"""One dynamic batcher in front of the detector, shared by every request and stream.

Callers on the event loop `await batcher.detect(frame, deadline_s=...)`. A single worker
thread takes every queued frame up to `max_batch_size`, runs the model and resolves each
caller's future. It waits up to `max_wait_s` for a batch to fill only while frames arrive
faster than one per `max_wait_s`: a lone frame, or a light load, goes to the model at once,
since waiting would add latency without making a larger batch. The queue is bounded: past
`queue_limit` waiting frames, `detect` raises `QueueFullError` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from service.detection.model import Detection, Detector
from service.metrics import Metrics

logger = logging.getLogger(__name__)

# Weight of the newest gap in the running mean of arrival gaps: about the last ten arrivals count.
_GAP_WEIGHT = 0.2


class BatcherError(RuntimeError):
    """Base of the errors `Batcher.detect` raises; `reason` is a short metric label."""

    reason = "detector_error"


class QueueFullError(BatcherError):
    reason = "queue_full"


class DeadlineExceededError(BatcherError):
    reason = "deadline"


class DetectorFailedError(BatcherError):
    reason = "detector_error"


class BatcherStoppedError(BatcherError):
    reason = "not_ready"


class BatcherState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class BatchResult:
    """Detections for one frame, with the time it spent queued and in the model."""

    detections: list[Detection]
    queue_wait_s: float
    inference_s: float
    batch_size: int


@dataclass(eq=False)
class _Item:
    frame: np.ndarray
    deadline_s: float
    enqueued_s: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[BatchResult] = field(repr=False)


def _resolve(future: asyncio.Future[BatchResult], result: BatchResult) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[BatchResult], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _post(loop: asyncio.AbstractEventLoop, callback: object, *args: object) -> None:
    """Run `callback(*args)` on the caller's loop; a loop that has closed has no one waiting."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)  # type: ignore[arg-type]


class Batcher:
    """Groups frames from all callers into model batches on one worker thread."""

    def __init__(
        self,
        detector: Detector,
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.004,
        queue_limit: int = 64,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be at least 1, got {queue_limit}")
        self.detector = detector
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self._metrics = metrics
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_limit)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = BatcherState.CREATED
        self._batch_started_s: float | None = None
        # Mean gap between arrivals (exponentially weighted), written on the event loop and
        # read by the worker; a float attribute is replaced atomically.
        self._arrival_gap_s = math.inf
        self._last_arrival_s: float | None = None

    @property
    def state(self) -> BatcherState:
        return self._state

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def busy_for_s(self) -> float:
        """Seconds the model has been running its current batch; 0 when idle."""
        started = self._batch_started_s
        return 0.0 if started is None else time.monotonic() - started

    def start(self) -> None:
        if self._state is not BatcherState.CREATED:
            raise RuntimeError(f"batcher cannot start from state {self._state}")
        self._thread = threading.Thread(target=self._run, name="sonomask-batcher", daemon=True)
        self._state = BatcherState.RUNNING
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the worker and fail every frame still queued."""
        if self._state is not BatcherState.RUNNING:
            self._state = BatcherState.STOPPED
            return
        self._state = BatcherState.STOPPED
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                # A hung model call cannot be interrupted; the daemon thread dies with the process.
                logger.warning("batcher worker still busy after %.1f s at stop", timeout_s)
        self._drain(BatcherStoppedError("the batcher has stopped"))

    async def detect(self, frame: np.ndarray, *, deadline_s: float) -> BatchResult:
        """Detect in one BGR frame; `deadline_s` is a `time.monotonic()` instant.

        Raises QueueFullError, DeadlineExceededError, DetectorFailedError or
        BatcherStoppedError; never returns a result computed after the deadline.
        """
        if self._state is not BatcherState.RUNNING:
            raise BatcherStoppedError(f"the batcher is {self._state}")
        now = time.monotonic()
        if deadline_s <= now:
            raise DeadlineExceededError("the deadline passed before the frame was queued")

        self._note_arrival(now)
        loop = asyncio.get_running_loop()
        item = _Item(frame, deadline_s, now, loop, loop.create_future())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise QueueFullError(
                f"the detector queue is full ({self.queue_limit} frames)"
            ) from None
        self._set_depth()

        try:
            return await asyncio.wait_for(asyncio.shield(item.future), deadline_s - now)
        except TimeoutError:
            item.future.cancel()
            raise DeadlineExceededError(
                f"no detection within the deadline of {deadline_s - now:.3f} s"
            ) from None

    def _note_arrival(self, now_s: float) -> None:
        if self._last_arrival_s is not None:
            gap_s = now_s - self._last_arrival_s
            previous = self._arrival_gap_s
            self._arrival_gap_s = (
                gap_s if math.isinf(previous) else previous + _GAP_WEIGHT * (gap_s - previous)
            )
        self._last_arrival_s = now_s

    # Worker thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            batch = self._collect([first])
            self._set_depth()
            live = self._drop_expired(batch)
            if live:
                self._predict(live)

    def _collect(self, batch: list[_Item]) -> list[_Item]:
        """Add the frames already queued; then wait up to `max_wait_s` only if more are due."""
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if len(batch) >= self.max_batch_size or self._arrival_gap_s >= self.max_wait_s:
            return batch

        window_end_s = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining_s = window_end_s - time.monotonic()
            if remaining_s <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining_s))
            except queue.Empty:
                break
        return batch

    def _drop_expired(self, batch: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        live = []
        for item in batch:
            if item.future.done():
                continue  # the caller gave up (deadline or cancellation)
            if item.deadline_s <= now:
                error = DeadlineExceededError("the deadline passed while the frame was queued")
                _post(item.loop, _fail, item.future, error)
                continue
            live.append(item)
        return live

    def _predict(self, batch: list[_Item]) -> None:
        started_s = time.monotonic()
        self._batch_started_s = started_s
        try:
            detections = self.detector.predict([item.frame for item in batch])
            _check_batch_output(detections, len(batch))
        except Exception as exc:  # a detector may raise anything; every caller must hear of it
            logger.error("detector failed on a batch of %d: %s", len(batch), exc)
            if self._metrics is not None:
                self._metrics.detector_errors_total.inc()
            for item in batch:
                error = DetectorFailedError(f"the detector failed: {type(exc).__name__}")
                _post(item.loop, _fail, item.future, error)
            return
        finally:
            self._batch_started_s = None

        inference_s = time.monotonic() - started_s
        if self._metrics is not None:
            self._metrics.batch_size.observe(len(batch))
            self._metrics.inference_seconds.observe(inference_s)
        for item, frame_detections in zip(batch, detections, strict=True):
            queue_wait_s = started_s - item.enqueued_s
            if self._metrics is not None:
                self._metrics.queue_wait_seconds.observe(queue_wait_s)
            result = BatchResult(list(frame_detections), queue_wait_s, inference_s, len(batch))
            _post(item.loop, _resolve, item.future, result)

    def _drain(self, error: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            _post(item.loop, _fail, item.future, error)
        self._set_depth()

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(self._queue.qsize())


def _check_batch_output(detections: object, expected: int) -> None:
    if not isinstance(detections, Sequence) or len(detections) != expected:
        got = len(detections) if isinstance(detections, Sequence) else type(detections).__name__
        raise ValueError(f"detector returned {got} results for a batch of {expected}")
