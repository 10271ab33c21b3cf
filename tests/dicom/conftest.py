"""Source instances for the DICOM tests, a real pipeline, and helpers to read outputs.

Sources are real files: ultrasound and secondary-capture instances shipped with pydicom,
the real ultrasound DICOM files beside the repository (`REAL_DICOM`), and variants built here
from those files with pydicom's own encoders (MONOCHROME1/2, YBR_FULL, implicit VR,
deflated, RLE, JPEG 2000). pydicom cannot write JPEG-LS without the pyjpegls plugin,
so JPEG-LS sources are the JPEG-LS files that pydicom ships.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space, iter_pixels
from pydicom.pixels.encoders import JPEGLSLosslessEncoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from service.config import Settings
from service.detection.model import UltralyticsDetector
from service.offline import local_pipeline
from service.pipeline import FramePipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_DICOM = REPO_ROOT.parent / "shared" / "data" / "real" / "dicom"

# Where pydicom can write JPEG-LS (with pyjpegls), JPEG-LS Lossless sources keep it.
JPEG_LS_OUTPUT = JPEGLSLossless if JPEGLSLosslessEncoder.is_available else RLELossless


def dicom_settings(**overrides: object) -> Settings:
    """Settings for DICOM tests: a deadline long enough for a loaded two-core machine."""
    values: dict[str, object] = {"deadline_ms": 60_000.0, "max_wait_ms": 1.0}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def real_detector(untrained_model_path: Path) -> UltralyticsDetector:
    """The shipped model when it is there, else the untrained one: both are real models."""
    from service.config import DEFAULT_MODEL_PATH

    path = DEFAULT_MODEL_PATH if DEFAULT_MODEL_PATH.is_file() else untrained_model_path
    return UltralyticsDetector(path, device="cpu")


@pytest.fixture
async def pipeline(real_detector: UltralyticsDetector) -> AsyncIterator[FramePipeline]:
    async with local_pipeline(dicom_settings(), detector=real_detector) as ready:
        yield ready


# Sources


def read_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def pydicom_file(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return read_bytes(str(path))


def real_file(name: str) -> bytes:
    path = REAL_DICOM / name
    if not path.is_file():
        pytest.skip(f"real DICOM data not found at {path}")
    return read_bytes(path)


def to_part10(dataset: Dataset, transfer_syntax: UID | None = None) -> bytes:
    if transfer_syntax is not None:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _us1() -> Dataset:
    return pydicom.dcmread(io.BytesIO(real_file("US1_UNCR.dcm")))


def _grey(dataset: Dataset) -> np.ndarray:
    rgb = dataset.pixel_array.astype(np.float32)
    return np.round(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.uint8)


def built_monochrome2() -> bytes:
    dataset = _us1()
    dataset.set_pixel_data(_grey(dataset), "MONOCHROME2", 8, generate_instance_uid=False)
    return to_part10(dataset)


def built_monochrome1() -> bytes:
    dataset = _us1()
    inverted = 255 - _grey(dataset)
    dataset.set_pixel_data(inverted, "MONOCHROME1", 8, generate_instance_uid=False)
    return to_part10(dataset)


def built_ybr_full() -> bytes:
    dataset = _us1()
    ybr = convert_color_space(dataset.pixel_array, "RGB", "YBR_FULL")
    dataset.set_pixel_data(ybr, "YBR_FULL", 8, generate_instance_uid=False)
    return to_part10(dataset)


def built_ybr_full_rle() -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(built_ybr_full()))
    dataset.compress(RLELossless, generate_instance_uid=False)
    return to_part10(dataset)


def built_implicit_vr() -> bytes:
    return to_part10(_us1(), ImplicitVRLittleEndian)


def built_deflated_palette() -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(real_file("OBXXXX1A.dcm")))
    return to_part10(dataset, DeflatedExplicitVRLittleEndian)


def built_jpeg2000_lossless_monochrome() -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(built_monochrome2()))
    dataset.compress(JPEG2000Lossless, generate_instance_uid=False)
    return to_part10(dataset)


def built_jpeg2000_lossy() -> bytes:
    dataset = _us1()
    dataset.compress(JPEG2000, j2k_cr=[20], generate_instance_uid=False)
    return to_part10(dataset)


def built_rgb_cine() -> bytes:
    """Three uncompressed RGB frames in an Ultrasound Multi-frame Image."""
    dataset = _us1()
    frame = dataset.pixel_array
    cine = np.stack([frame, np.roll(frame, 8, axis=1), np.roll(frame, 16, axis=1)])
    dataset.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.3.1")
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.set_pixel_data(cine, "RGB", 8, generate_instance_uid=False)
    dataset.NumberOfFrames = 3
    dataset.FrameIncrementPointer = 0x00181063  # Frame Time
    dataset.FrameTime = 33.3
    return to_part10(dataset)


@dataclass(frozen=True)
class Case:
    """A source instance and what its masked output must be."""

    name: str
    load: Callable[[], bytes]
    output_syntax: UID
    lossy: bool
    photometric: str


CASES = [
    # pydicom's test files
    Case(
        "ybr_cine_jpeg",
        lambda: pydicom_file("examples_ybr_color.dcm"),
        RLELossless,
        True,
        "YBR_FULL",
    ),
    Case(
        "rgb", lambda: pydicom_file("examples_rgb_color.dcm"), ExplicitVRLittleEndian, False, "RGB"
    ),
    Case(
        "palette",
        lambda: pydicom_file("examples_palette.dcm"),
        ExplicitVRLittleEndian,
        False,
        "PALETTE COLOR",
    ),
    Case(
        "jpeg2000_rct",
        lambda: pydicom_file("examples_jpeg2k.dcm"),
        JPEG2000Lossless,
        False,
        "YBR_RCT",
    ),
    Case(
        "big_endian", lambda: pydicom_file("ExplVR_BigEnd.dcm"), ExplicitVRBigEndian, False, "RGB"
    ),
    Case(
        "big_endian_16bit",
        lambda: pydicom_file("MR_small_bigendian.dcm"),
        ExplicitVRBigEndian,
        False,
        "MONOCHROME2",
    ),
    Case(
        "deflated",
        lambda: pydicom_file("image_dfl.dcm"),
        DeflatedExplicitVRLittleEndian,
        False,
        "MONOCHROME2",
    ),
    Case(
        "ybr_422_native",
        lambda: pydicom_file("SC_ybr_full_422_uncompressed.dcm"),
        ExplicitVRLittleEndian,
        True,  # the header already records lossy compression
        "YBR_FULL",
    ),
    Case(
        "jpeg_ls_lossless_16bit",
        lambda: pydicom_file("MR_small_jpeg_ls_lossless.dcm"),
        JPEG_LS_OUTPUT,
        False,
        "MONOCHROME2",
    ),
    Case(
        "jpeg_ls_near_lossless_rgb",
        lambda: pydicom_file("SC_rgb_jls_lossy_line.dcm"),
        RLELossless,
        True,
        "RGB",
    ),
    Case(
        "jpeg2000_lossy_16bit",
        lambda: pydicom_file("JPEG2000.dcm"),
        RLELossless,
        True,
        "MONOCHROME2",
    ),
    Case(
        "jpeg_extended_12bit",
        lambda: pydicom_file("JPGExtended.dcm"),
        RLELossless,
        True,
        "MONOCHROME2",
    ),
    Case(
        "jpeg_lossless_rgb",
        lambda: pydicom_file("SC_rgb_jpeg_gdcm.dcm"),
        RLELossless,
        False,
        "RGB",
    ),
    Case(
        "rle_rgb_2frame", lambda: pydicom_file("SC_rgb_rle_2frame.dcm"), RLELossless, False, "RGB"
    ),
    # Real ultrasound files
    Case("us1_rgb", lambda: real_file("US1_UNCR.dcm"), ExplicitVRLittleEndian, False, "RGB"),
    Case(
        "ob_palette",
        lambda: real_file("OBXXXX1A.dcm"),
        ExplicitVRLittleEndian,
        False,
        "PALETTE COLOR",
    ),
    Case(
        "ob_palette_rle_2frame",
        lambda: real_file("OBXXXX1A_rle_2frame.dcm"),
        RLELossless,
        False,
        "PALETTE COLOR",
    ),
    Case(
        "aloka_palette_16bit",
        lambda: real_file("gdcm-US-ALOKA-16.dcm"),
        ImplicitVRLittleEndian,
        False,
        "PALETTE COLOR",
    ),
    Case(
        "colour_doppler_planar",
        lambda: real_file("color-pl.dcm"),
        ExplicitVRLittleEndian,
        False,
        "RGB",
    ),
    Case(
        "large_rgb_jpeg",
        lambda: real_file("sonoque_anechoic-3mm-3mm.dcm"),
        RLELossless,
        True,
        "RGB",
    ),
    # Variants built from the real files
    Case("monochrome2", built_monochrome2, ExplicitVRLittleEndian, False, "MONOCHROME2"),
    Case("monochrome1", built_monochrome1, ExplicitVRLittleEndian, False, "MONOCHROME1"),
    Case("ybr_full_native", built_ybr_full, ExplicitVRLittleEndian, False, "YBR_FULL"),
    Case("ybr_full_rle", built_ybr_full_rle, RLELossless, False, "YBR_FULL"),
    Case("implicit_vr", built_implicit_vr, ImplicitVRLittleEndian, False, "RGB"),
    Case(
        "deflated_palette",
        built_deflated_palette,
        DeflatedExplicitVRLittleEndian,
        False,
        "PALETTE COLOR",
    ),
    Case(
        "jpeg2000_lossless_grey",
        built_jpeg2000_lossless_monochrome,
        JPEG2000Lossless,
        False,
        "MONOCHROME2",
    ),
    Case("jpeg2000_lossy_rgb", built_jpeg2000_lossy, RLELossless, True, "RGB"),
    Case("rgb_cine_native", built_rgb_cine, ExplicitVRLittleEndian, False, "RGB"),
]


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    selected: Case = request.param
    return selected


# Reading outputs


def decoded_frames(data: bytes, *, raw: bool = False) -> list[np.ndarray]:
    """Every frame of a Part 10 file, decoded by pydicom."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    return list(iter_pixels(dataset, raw=raw))


def read_header(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
