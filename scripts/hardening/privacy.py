"""Searches of log output for identifying data: DICOM header values and image bytes."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom

# Keywords whose values identify a patient, a study, a site or a person.
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "AcquisitionDateTime",
    "DeviceSerialNumber",
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
)
# Identifying UIDs; class and transfer syntax UIDs are standard values, not identifiers.
STANDARD_UID_KEYWORDS = {"SOPClassUID", "TransferSyntaxUID", "MediaStorageSOPClassUID"}
MIN_VALUE_CHARS = 4

BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")
HEX_RUN = re.compile(r"[0-9a-fA-F]{64,}")
ESCAPED_BYTES = re.compile(r"(\\x[0-9a-fA-F]{2}){8,}")
ARRAY_REPR = re.compile(r"\[\[\s*-?\d+")
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")


def identifying_values(path: Path) -> list[tuple[str, str]]:
    """(keyword, value) pairs of identifying attributes in one DICOM file, header only."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    found = []
    for element in dataset.iterall():
        keyword = element.keyword
        wanted = keyword in IDENTIFYING_KEYWORDS or (
            element.VR == "UI" and keyword not in STANDARD_UID_KEYWORDS
        )
        if not wanted or element.value in (None, ""):
            continue
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            text = str(value).strip()
            if len(text) >= MIN_VALUE_CHARS:
                found.append((keyword, text))
    return found


def pixel_data_findings(lines: list[str]) -> list[str]:
    """Name each line that looks like it carries image bytes, by line number and pattern."""
    findings = []
    patterns = {
        "base64 run": BASE64_RUN,
        "hex run": HEX_RUN,
        "escaped bytes": ESCAPED_BYTES,
        "array repr": ARRAY_REPR,
        "control or undecodable characters": CONTROL_CHARS,
    }
    for number, line in enumerate(lines):
        for name, pattern in patterns.items():
            if pattern.search(line):
                findings.append(f"line {number}: {name}")
    return findings
