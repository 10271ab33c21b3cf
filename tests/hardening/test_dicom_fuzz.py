"""Bounded fuzzing of the DICOM path: mutated instances through `mask_instance` and a real model.

Any input must give a derived instance that pydicom can read, or `DicomInputError` with a
4xx status. Any other exception would reach the client as a 500.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.hardening.make_corpus import dicom_bytes
from service.config import Settings
from service.detection.batcher import Batcher
from service.detection.loading import load_detector
from service.dicom import DicomInputError, MaskedInstance, mask_instance
from service.masking import MaskSpec
from service.metrics import Metrics
from service.pipeline import FramePipeline

# pydicom warns about each unknown tag that a mutation creates; those warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SYNTHETIC_SEEDS = [
    dicom_bytes(rows=16, columns=24),
    dicom_bytes(rows=12, columns=20, bits=16),
    dicom_bytes(rows=12, columns=16, photometric="RGB"),
    dicom_bytes(rows=8, columns=12, frames=3),
    dicom_bytes(rows=8, columns=12, implicit_vr=True),
]
# The header, where a flipped byte changes a length, a VR or a tag, comes first in the file.
HEADER_BYTES = 1024
FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


@pytest.fixture(scope="module")
def dicom_pipeline(untrained_model_path: Path) -> Iterator[tuple[Settings, FramePipeline]]:
    """A frame pipeline over the untrained model, as the app builds it, without HTTP."""
    config = Settings(model_path=untrained_model_path, selftest_require_detection=False)
    detector = load_detector(config)
    detector.warmup()
    batcher = Batcher(detector, max_batch_size=4, max_wait_s=0.0, queue_limit=64)
    batcher.start()
    pipeline = FramePipeline(
        batcher,
        floor_spec=MaskSpec(config.mask_style, config.mask_margin),
        deadline_s=60.0,
        metrics=Metrics(),
        model_id=detector.info.model_id,
    )
    pipeline.ready = True
    yield config, pipeline
    batcher.stop()


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid instance with bytes flipped, cut, or spliced in, mostly in its header."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        in_header = draw(st.booleans()) or len(data) <= HEADER_BYTES
        upper = min(len(data), HEADER_BYTES) if in_header else len(data)
        position = draw(st.integers(0, max(upper - 1, 0)))
        operation = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        if operation == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "cut":
            data = data[: max(position, 132)]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=32))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[position : position + len(chunk)] = chunk
    return bytes(data)


def mask_or_reject(data: bytes, config: Settings, pipeline: FramePipeline) -> None:
    try:
        masked = asyncio.run(
            mask_instance(
                data,
                pipeline,
                spec=None,
                new_tracker=None,
                blank_on_failure=True,
                settings=config,
            )
        )
    except DicomInputError as exc:
        assert exc.status_code in {400, 413, 415, 422}
        assert str(exc)
        return
    assert isinstance(masked, MaskedInstance)
    returned = pydicom.dcmread(io.BytesIO(masked.data))
    assert returned.SOPInstanceUID
    assert masked.frames >= 1


@FUZZ
@given(data=mutated(SYNTHETIC_SEEDS))
def test_dicom_mutated_synthetic(dicom_pipeline, data: bytes) -> None:
    mask_or_reject(data, *dicom_pipeline)


@FUZZ
@given(tail=st.binary(max_size=1024))
def test_dicom_prefix_then_bytes(dicom_pipeline, tail: bytes) -> None:
    mask_or_reject(b"\x00" * 128 + b"DICM" + tail, *dicom_pipeline)


def test_dicom_mutated_real_files(dicom_pipeline, real_data: Path) -> None:
    seeds = [path.read_bytes() for path in sorted((real_data / "dicom").glob("*.dcm"))]
    seeds = [seed for seed in seeds if len(seed) < 200_000]
    assert seeds, "no small real DICOM file to mutate"

    @settings(max_examples=60, deadline=None, database=None)
    @given(data=mutated(seeds))
    def check(data: bytes) -> None:
        mask_or_reject(data, *dicom_pipeline)

    check()
