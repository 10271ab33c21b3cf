"""The pipeline outside the server: for the command line, video files and benchmarks.

`local_pipeline` starts the same batcher and pipeline the service uses, so files masked
offline get exactly the decisions the API would give them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.codecs import ImageFormat, ImageInputError, decode_image, encode_image
from service.config import MaskStyle, Settings
from service.detection.batcher import Batcher
from service.detection.loading import load_detector
from service.detection.model import Detector
from service.dicom import DicomInputError, mask_instance
from service.masking import MaskSpec
from service.metrics import Metrics
from service.pipeline import FramePipeline
from service.tracking import HoldConfig, Tracker

logger = logging.getLogger(__name__)


@asynccontextmanager
async def local_pipeline(
    settings: Settings, *, detector: Detector | None = None, metrics: Metrics | None = None
) -> AsyncIterator[FramePipeline]:
    """Start a ready pipeline on a fresh batcher, and stop the batcher when the block ends."""
    if detector is None:
        detector = await asyncio.to_thread(load_detector, settings)
    await asyncio.to_thread(detector.warmup)
    metrics = metrics if metrics is not None else Metrics()
    batcher = Batcher(
        detector,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_s,
        queue_limit=settings.queue_limit,
        metrics=metrics,
    )
    batcher.start()
    pipeline = FramePipeline(
        batcher,
        floor_spec=MaskSpec(settings.mask_style, settings.mask_margin),
        deadline_s=settings.deadline_s,
        metrics=metrics,
        model_id=detector.info.model_id,
    )
    pipeline.ready = True
    try:
        yield pipeline
    finally:
        pipeline.ready = False
        await asyncio.to_thread(batcher.stop)


async def mask_files(
    files: Sequence[tuple[Path, Path]],
    out_dir: Path,
    settings: Settings,
    *,
    style: str | None = None,
    margin: float | None = None,
) -> dict[str, Any]:
    """Mask every (file, relative path) into `out_dir`; return the per-file report."""
    started_s = time.monotonic()
    requested = MaskSpec(MaskStyle(style) if style else settings.mask_style, margin or 0.0)
    entries: list[dict[str, Any]] = []
    async with local_pipeline(settings) as pipeline:
        # As many files in flight as one batch holds, so the batcher can group them.
        limit = asyncio.Semaphore(settings.max_batch_size)
        progress = tqdm(total=len(files), unit="file", desc="masking")

        async def one(source: Path, relative: Path) -> dict[str, Any]:
            async with limit:
                entry = await _mask_one(pipeline, source, out_dir / relative, requested, settings)
            progress.update(1)
            entry["file"] = str(relative)
            return entry

        entries = list(await asyncio.gather(*(one(src, rel) for src, rel in files)))
        progress.close()
        model_id = pipeline.model_id
    return {"model_id": model_id, "seconds": time.monotonic() - started_s, "files": entries}


async def _mask_one(
    pipeline: FramePipeline, source: Path, target: Path, spec: MaskSpec, settings: Settings
) -> dict[str, Any]:
    received_s = time.monotonic()
    data = await asyncio.to_thread(source.read_bytes)
    suffix = source.suffix.lower()
    if suffix in {".dcm", ".dicom"}:
        return await _mask_dicom_file(pipeline, data, target, spec, settings)
    image_format = ImageFormat.JPEG if suffix in {".jpg", ".jpeg"} else ImageFormat.PNG
    try:
        decoded = await asyncio.to_thread(
            decode_image, data, image_format, max_pixels=settings.max_pixels
        )
    except ImageInputError as exc:
        return {"error": exc.message}

    outcome = await pipeline.run(decoded.bgr, spec=spec)
    pixels = await asyncio.to_thread(outcome.render, decoded.pixels)
    body = await asyncio.to_thread(encode_image, pixels, decoded.mode, decoded.format)
    target.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(target.write_bytes, body)
    pipeline.record("cli", outcome, received_s)
    return {
        "decision": outcome.decision.value,
        "detections": [d.as_dict() for d in outcome.detections],
        "blanked_reason": outcome.failure.value if outcome.failure else None,
    }


async def _mask_dicom_file(
    pipeline: FramePipeline, data: bytes, target: Path, spec: MaskSpec, settings: Settings
) -> dict[str, Any]:
    """Mask a DICOM file into `target`; frames that cannot be checked are blanked, as images are."""
    hold_config = HoldConfig.from_settings(settings)
    try:
        masked = await mask_instance(
            data,
            pipeline,
            spec=spec,
            new_tracker=lambda: Tracker(hold_config),
            blank_on_failure=True,
            settings=settings,
        )
    except DicomInputError as exc:
        return {"error": str(exc)}
    target.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(target.write_bytes, masked.data)
    return {
        "frames": masked.frames,
        "decisions": masked.decisions,
        "transfer_syntax_uid": masked.transfer_syntax_uid,
    }
