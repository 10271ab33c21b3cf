"""The shipped model masks phantom targets inside DICOM instances as it does in plain frames.

Phantom stills with a known target box are stored as a multi-frame instance in three
representations. Each output frame must equal what the pipeline gives for the same frame
outside DICOM, and every frame the model masked must have its true target covered.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from service.detection.model import UltralyticsDetector
from service.dicom import mask_instance
from service.masking import expand_box_xyxy
from service.offline import local_pipeline
from service.pipeline import FramePipeline
from service.research.anatomy import POSITIVE_PLANES
from service.research.phantoms import render_still

from .conftest import decoded_frames, dicom_settings, to_part10

FRAME_SIZE_WH = (640, 480)
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
COVERED_SHARE = 0.95


@pytest.fixture(scope="module")
def phantom_cine() -> tuple[np.ndarray, list[tuple[float, float, float, float] | None]]:
    """Six grey stills, four with a target box, as (frames, true box or None per frame)."""
    frames = []
    boxes: list[tuple[float, float, float, float] | None] = []
    positive = [POSITIVE_PLANES[i % len(POSITIVE_PLANES)] for i in range(4)]
    planes = [*positive, "head", "femur"]
    for seed, plane in enumerate(planes):
        still = render_still(9100 + seed, plane, size_wh=FRAME_SIZE_WH, overlays=False)
        frames.append(still.image_bgr[..., 0])
        boxes.append(still.boxes[0][1] if still.boxes else None)
    return np.stack(frames), boxes


def _instance(grey_frames: np.ndarray, photometric: str) -> bytes:
    dataset = Dataset()
    dataset.SOPClassUID = US_MULTIFRAME_IMAGE_STORAGE
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "US"
    dataset.ImageType = ["ORIGINAL", "PRIMARY"]
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    if photometric == "RGB":
        pixels = np.repeat(grey_frames[..., None], 3, axis=-1)
    elif photometric == "MONOCHROME1":
        pixels = 255 - grey_frames
    else:
        pixels = grey_frames
    dataset.set_pixel_data(pixels, photometric, 8, generate_instance_uid=False)
    dataset.NumberOfFrames = len(grey_frames)
    if photometric == "RGB":
        dataset.compress(RLELossless, generate_instance_uid=False)
    return to_part10(dataset)


@pytest.fixture
async def trained_pipeline(default_model_path: Path) -> AsyncIterator[FramePipeline]:
    detector = UltralyticsDetector(default_model_path, device="cpu")
    async with local_pipeline(dicom_settings(), detector=detector) as ready:
        yield ready


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1", "RGB"])
async def test_phantom_targets_masked_in_dicom(
    photometric: str,
    phantom_cine: tuple[np.ndarray, list[tuple[float, float, float, float] | None]],
    trained_pipeline: FramePipeline,
) -> None:
    grey_frames, true_boxes = phantom_cine
    source = _instance(grey_frames, photometric)

    result = await mask_instance(
        source,
        trained_pipeline,
        spec=None,
        new_tracker=None,
        blank_on_failure=False,
        settings=dicom_settings(),
    )
    output_frames = decoded_frames(result.data)
    source_frames = decoded_frames(source)
    black = 255 if photometric == "MONOCHROME1" else 0

    covered_targets = 0
    for index, true_box in enumerate(true_boxes):
        # The same frame through the pipeline outside DICOM gives the reference output.
        frame_bgr = np.repeat(grey_frames[index][..., None], 3, axis=-1)
        outcome = await trained_pipeline.run(frame_bgr)
        expected = outcome.render(source_frames[index], fill_value=black)
        assert np.array_equal(output_frames[index], expected), f"frame {index} differs"

        if outcome.boxes_xyxy and true_box is not None:
            left, top, right, bottom = expand_box_xyxy(true_box, 0.0, *FRAME_SIZE_WH)
            region = output_frames[index][top:bottom, left:right]
            black_pixels = region == black if region.ndim == 2 else np.all(region == black, axis=-1)
            covered = float(black_pixels.mean())
            assert covered >= COVERED_SHARE, f"frame {index}: target {covered:.0%} covered"
            covered_targets += 1

    assert covered_targets >= 1, "the shipped model masked no phantom target"


async def test_phantom_header_round_trip(
    phantom_cine: tuple[np.ndarray, list[tuple[float, float, float, float] | None]],
    trained_pipeline: FramePipeline,
) -> None:
    grey_frames, _ = phantom_cine
    source = _instance(grey_frames, "MONOCHROME2")

    result = await mask_instance(
        source,
        trained_pipeline,
        spec=None,
        new_tracker=None,
        blank_on_failure=False,
        settings=dicom_settings(),
    )
    derived = pydicom.dcmread(io.BytesIO(result.data))

    assert trained_pipeline.model_id in derived.DerivationDescription
    assert f"{result.decisions['masked']} masked" in derived.DerivationDescription
    assert int(derived.NumberOfFrames) == len(grey_frames)
