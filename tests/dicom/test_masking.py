"""Masked pixels in each native representation, blanked frames, and the detector's input.

The known-box tests use the fault-injection detector of the shared fixtures with fixed
boxes, because no real model finds the region in these files: it is the only way to know
where the mask must be.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut

from service.detection.model import Detection
from service.dicom import _read_source, mask_instance
from service.masking import expand_box_xyxy
from service.offline import local_pipeline
from service.pipeline import FailureReason, FrameCheckFailedError, FramePipeline

from .conftest import CASES, Case, decoded_frames, dicom_settings, read_header, real_file

KNOWN_BOX_CASES = [
    case
    for case in CASES
    if case.name
    in {
        "ybr_cine_jpeg",
        "ybr_full_native",
        "ybr_full_rle",
        "ybr_422_native",
        "monochrome1",
        "monochrome2",
        "jpeg_ls_lossless_16bit",
        "big_endian_16bit",
        "palette",
        "aloka_palette_16bit",
        "ob_palette_rle_2frame",
        "big_endian",
        "jpeg2000_rct",
        "jpeg2000_lossless_grey",
        "deflated_palette",
        "rgb_cine_native",
    }
]


@pytest.fixture
async def fault_pipeline(faulty_detector) -> AsyncIterator[FramePipeline]:  # type: ignore[no-untyped-def]
    async with local_pipeline(dicom_settings(), detector=faulty_detector) as ready:
        yield ready


def _is_black(header: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """Per pixel: whether it shows black, for pixels decoded by pydicom as RGB or stored values."""
    photometric = header.PhotometricInterpretation
    if (
        pixels.ndim == 1
        or (pixels.ndim >= 2 and pixels.shape[-1] != 3)
        or photometric
        in (
            "MONOCHROME1",
            "MONOCHROME2",
            "PALETTE COLOR",
        )
    ):
        bits = int(header.BitsStored)
        signed = int(header.PixelRepresentation) == 1
        low = -(1 << (bits - 1)) if signed else 0
        high = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        if photometric == "MONOCHROME1":
            return pixels == high
        if photometric == "MONOCHROME2":
            return pixels == low
        colours = apply_color_lut(pixels, header).astype(np.float64)
        luminance = colours @ np.array([0.299, 0.587, 0.114])
        every_index = np.arange(1 << bits, dtype=pixels.dtype)
        darkest = (
            apply_color_lut(every_index, header).astype(np.float64) @ [0.299, 0.587, 0.114]
        ).min()
        return np.isclose(luminance, darkest)
    return np.all(pixels == 0, axis=-1)


@pytest.mark.parametrize("case", KNOWN_BOX_CASES, ids=[c.name for c in KNOWN_BOX_CASES])
async def test_known_box_masked_in_native_pixels(
    case: Case,
    faulty_detector,
    fault_pipeline: FramePipeline,  # type: ignore[no-untyped-def]
) -> None:
    source = case.load()
    header = read_header(source)
    width, height = int(header.Columns), int(header.Rows)
    box = (width * 0.30, height * 0.25, width * 0.55, height * 0.60)
    faulty_detector.boxes = [Detection(0, "transverse", 0.9, box)]
    left, top, right, bottom = expand_box_xyxy(box, fault_pipeline.floor_spec.margin, width, height)

    settings = dicom_settings()
    result = await mask_instance(
        source,
        fault_pipeline,
        spec=None,
        new_tracker=None,
        blank_on_failure=False,
        settings=settings,
    )
    output_header = pydicom.dcmread(io.BytesIO(result.data))

    assert result.decisions["masked"] == result.frames
    for source_frame, output_frame in zip(
        decoded_frames(source), decoded_frames(result.data), strict=True
    ):
        inside = np.zeros((height, width), dtype=bool)
        inside[top:bottom, left:right] = True
        assert _is_black(output_header, output_frame[inside]).all()
        assert np.array_equal(output_frame[~inside], source_frame[~inside])


@pytest.mark.parametrize("name", ["monochrome1", "ybr_full_native", "palette", "ybr_cine_jpeg"])
async def test_detector_failure_blanks_frames(
    name: str,
    faulty_detector,
    fault_pipeline: FramePipeline,  # type: ignore[no-untyped-def]
) -> None:
    case = next(c for c in CASES if c.name == name)
    source = case.load()
    faulty_detector.fault = "raise"

    result = await mask_instance(
        source,
        fault_pipeline,
        spec=None,
        new_tracker=None,
        blank_on_failure=True,
        settings=dicom_settings(),
    )
    header = pydicom.dcmread(io.BytesIO(result.data))

    assert result.decisions["blanked"] == result.frames
    for frame in decoded_frames(result.data):
        black = _is_black(header, frame)
        assert black.mean() > 0.8, "a blanked frame must be black apart from the notice"
        assert not black.all(), "a blanked frame must show the notice"


async def test_detector_failure_raises_without_blanking(
    faulty_detector,
    fault_pipeline: FramePipeline,  # type: ignore[no-untyped-def]
) -> None:
    source = next(c for c in CASES if c.name == "ybr_cine_jpeg").load()
    faulty_detector.fault = "raise"

    with pytest.raises(FrameCheckFailedError) as raised:
        await mask_instance(
            source,
            fault_pipeline,
            spec=None,
            new_tracker=None,
            blank_on_failure=False,
            settings=dicom_settings(),
        )

    assert raised.value.reason is FailureReason.DETECTOR_ERROR
    assert "frame 1 of 30" in str(raised.value)


def test_detector_sees_only_2d_regions() -> None:
    """The detector gets black pixels outside the 2D regions of the ultrasound regions."""
    data = real_file("OBXXXX1A.dcm")
    source = _read_source(data, dicom_settings())
    regions = [
        item
        for item in pydicom.dcmread(io.BytesIO(data)).SequenceOfUltrasoundRegions
        if int(item.RegionSpatialFormat) == 1
    ]
    frame = decoded_frames(data, raw=True)[0]

    seen = source.native.detector_frame(frame)

    assert regions, "the test file declares 2D regions"
    inside = np.zeros(frame.shape[:2], dtype=bool)
    for item in regions:
        x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
        x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert not seen[~inside].any()
    assert seen[inside].any()
