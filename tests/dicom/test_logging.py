"""No value read from a DICOM header reaches a log line, not even through pydicom's warnings."""

from __future__ import annotations

import io
import logging

import pydicom
import pydicom.config
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from service.dicom import DicomInputError, mask_instance
from service.pipeline import FramePipeline

from .conftest import CASES, Case, dicom_settings, real_file, to_part10

IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyDate",
    "SeriesDate",
    "ContentDate",
    "AcquisitionDate",
    "StudyTime",
    "StudyID",
    "InstitutionName",
    "ReferringPhysicianName",
    "StationName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def _with_invalid_values() -> bytes:
    """A real file whose series UID breaks the UI rules, which pydicom's value validation
    would quote in a warning."""
    dataset = pydicom.dcmread(io.BytesIO(real_file("US1_UNCR.dcm")))
    with pydicom.config.disable_value_validation():
        dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.0123"
    return to_part10(dataset)


LOGGED_CASES = [
    *(c for c in CASES if c.name in {"colour_doppler_planar", "us1_rgb", "ybr_cine_jpeg"}),
    Case("invalid_values", _with_invalid_values, ExplicitVRLittleEndian, False, "RGB"),
]


def _header_values(data: bytes) -> set[str]:
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    values = set()
    for keyword in IDENTIFYING_KEYWORDS:
        value = str(dataset.get(keyword, "") or "").strip()
        if len(value) >= 4:
            values.add(value)
    return values


@pytest.mark.parametrize("case", LOGGED_CASES, ids=[c.name for c in LOGGED_CASES])
async def test_header_values_not_logged(
    case,
    pipeline: FramePipeline,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    source = case.load()
    secrets = _header_values(source)
    caplog.set_level(logging.DEBUG)

    result = await mask_instance(
        source,
        pipeline,
        spec=None,
        new_tracker=None,
        blank_on_failure=False,
        settings=dicom_settings(),
    )
    pydicom.dcmread(io.BytesIO(result.data)).pixel_array  # noqa: B018 - a reader may log too

    assert secrets, "the source has identifying values to look for"
    assert any("masked DICOM instance" in r.getMessage() for r in caplog.records)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    leaked = sorted(keyword for keyword in IDENTIFYING_KEYWORDS if _leaks(keyword, source, logged))
    assert leaked == []


async def test_rejection_message_has_no_header_values(pipeline: FramePipeline) -> None:
    case = next(c for c in CASES if c.name == "colour_doppler_planar")
    source = case.load()
    secrets = _header_values(source)

    with pytest.raises(DicomInputError) as raised:
        await mask_instance(
            source,
            pipeline,
            spec=None,
            new_tracker=None,
            blank_on_failure=False,
            settings=dicom_settings(max_pixels=100),
        )

    assert not any(secret in str(raised.value) for secret in secrets)


def _leaks(keyword: str, source: bytes, logged: str) -> bool:
    dataset = pydicom.dcmread(io.BytesIO(source), stop_before_pixels=True)
    value = str(dataset.get(keyword, "") or "").strip()
    return len(value) >= 4 and value in logged
