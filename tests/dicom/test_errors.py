"""Bad DICOM input is rejected with a 4xx status and a reason, never with another exception."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydicom.uid import UID

from service.dicom import DicomInputError, MaskedInstance, mask_instance
from service.offline import local_pipeline
from service.pipeline import FramePipeline

from .conftest import dicom_settings, pydicom_file, real_file, to_part10


def _png() -> bytes:
    ok, encoded = cv2.imencode(".png", np.zeros((32, 32, 3), dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def _us1() -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(real_file("US1_UNCR.dcm")))


def _without_pixel_data() -> bytes:
    dataset = _us1()
    del dataset.PixelData
    return to_part10(dataset)


def _with_syntax(uid: str) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(pydicom_file("examples_ybr_color.dcm")))
    return to_part10(dataset, UID(uid))


def _with_32_bit_pixels() -> bytes:
    dataset = _us1()
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.SamplesPerPixel = 1
    del dataset.PlanarConfiguration
    dataset.BitsAllocated = dataset.BitsStored = 32
    dataset.HighBit = 31
    dataset.PixelData = bytes(int(dataset.Rows) * int(dataset.Columns) * 4)
    return to_part10(dataset)


def _with_photometric(value: str) -> bytes:
    dataset = _us1()
    dataset.PhotometricInterpretation = value
    return to_part10(dataset)


def _palette_without_tables() -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(real_file("OBXXXX1A.dcm")))
    for keyword in ("Red", "Green", "Blue"):
        del dataset[f"{keyword}PaletteColorLookupTableDescriptor"]
    return to_part10(dataset)


def _without_sop_uids() -> bytes:
    data = bytearray(to_part10(_us1()))
    dataset = pydicom.dcmread(io.BytesIO(bytes(data)))
    del dataset.SOPInstanceUID
    dataset.file_meta.MediaStorageSOPInstanceUID = ""
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def _corrupt_cine() -> bytes:
    """The cine with the middle of its JPEG data overwritten by noise."""
    data = bytearray(pydicom_file("examples_ybr_color.dcm"))
    middle = len(data) // 2
    data[middle : middle + 20_000] = np.random.default_rng(0).bytes(20_000)
    return bytes(data)


ERROR_CASES: list[tuple[str, Callable[[], bytes], int, str, dict[str, object]]] = [
    ("png", _png, 415, "not a DICOM Part 10 file", {}),
    ("empty", lambda: b"", 415, "not a DICOM Part 10 file", {}),
    ("no_preamble", lambda: pydicom_file("ExplVR_LitEndNoMeta.dcm"), 415, "DICM", {}),
    ("meta_cut", lambda: real_file("US1_UNCR.dcm")[:200], 400, "truncated", {}),
    ("header_cut", lambda: real_file("US1_UNCR.dcm")[:500], 400, "truncated", {}),
    ("pixels_cut", lambda: real_file("US1_UNCR.dcm")[:-5000], 400, "could not be decoded", {}),
    ("cine_cut", lambda: pydicom_file("examples_ybr_color.dcm")[:120_000], 400, "truncated", {}),
    ("cine_corrupt", _corrupt_cine, 400, "could not be decoded", {}),
    ("structured_report", lambda: pydicom_file("test-SR.dcm"), 422, "Comprehensive SR", {}),
    ("no_pixel_data", _without_pixel_data, 422, "no Pixel Data", {}),
    ("mpeg2", lambda: _with_syntax("1.2.840.10008.1.2.4.100"), 415, "not supported", {}),
    ("unknown_syntax", lambda: _with_syntax("1.2.3.4.5"), 415, "not a known transfer syntax", {}),
    ("bits_32", _with_32_bit_pixels, 415, "Bits Allocated 32", {}),
    ("photometric_hsv", lambda: _with_photometric("HSV"), 415, "HSV", {}),
    ("palette_no_tables", _palette_without_tables, 422, "palette", {}),
    ("no_sop_uids", _without_sop_uids, 422, "SOPInstanceUID", {}),
    (
        "too_many_frames",
        lambda: pydicom_file("examples_ybr_color.dcm"),
        413,
        "30 frames",
        {"max_dicom_frames": 10},
    ),
    ("too_many_pixels", lambda: real_file("US1_UNCR.dcm"), 413, "640x480", {"max_pixels": 1000}),
]


@pytest.fixture
async def fault_pipeline(faulty_detector) -> AsyncIterator[FramePipeline]:  # type: ignore[no-untyped-def]
    async with local_pipeline(dicom_settings(), detector=faulty_detector) as ready:
        yield ready


@pytest.mark.parametrize(
    ("load", "status_code", "reason", "overrides"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_bad_input_rejected(
    load: Callable[[], bytes],
    status_code: int,
    reason: str,
    overrides: dict[str, object],
    fault_pipeline: FramePipeline,
) -> None:
    data = load()

    with pytest.raises(DicomInputError) as raised:
        await mask_instance(
            data,
            fault_pipeline,
            spec=None,
            new_tracker=None,
            blank_on_failure=False,
            settings=dicom_settings(**overrides),
        )

    assert raised.value.status_code == status_code
    assert reason in str(raised.value)


def test_error_status_must_be_a_client_error() -> None:
    with pytest.raises(ValueError, match="status_code"):
        DicomInputError("bad", status_code=500)


@pytest.mark.parametrize("name", ["examples_palette.dcm", "examples_ybr_color.dcm"])
@hypothesis_settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    positions=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=8),
    values=st.binary(min_size=8, max_size=8),
    header_only=st.booleans(),
)
async def test_corrupt_bytes_never_escape(
    name: str,
    positions: list[float],
    values: bytes,
    header_only: bool,
    faulty_detector,  # type: ignore[no-untyped-def]
) -> None:
    """Bytes overwritten anywhere give a masked instance or a DicomInputError, nothing else."""
    data = bytearray(pydicom_file(name))
    span = 4000 if header_only else len(data) - 133
    for position, value in zip(positions, values, strict=False):
        data[132 + int(position * span)] = value

    async with local_pipeline(dicom_settings(), detector=faulty_detector) as pipeline:
        try:
            result = await mask_instance(
                bytes(data),
                pipeline,
                spec=None,
                new_tracker=None,
                blank_on_failure=False,
                settings=dicom_settings(),
            )
        except DicomInputError as exc:
            assert exc.status_code in {400, 413, 415, 422}
        else:
            assert isinstance(result, MaskedInstance)
