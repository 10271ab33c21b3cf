"""DICOM in, DICOM out: mask every frame of an image instance and write a derived instance.

`mask_instance` reads a DICOM Part 10 file, decodes its frames one at a time, sends them
through the frame pipeline in order (so a hold policy gets a cine's frames in order, as
from a stream), masks the decoded pixels in their own representation and writes a new instance.
The new instance has a new SOP Instance UID, Image Type DERIVED, a Derivation
Description, and a Source Image Sequence that references the original. Every other
attribute is kept, except those that could carry unmasked pixels or describe the old
encoding (see `_ATTRIBUTES_DROPPED`).

The output keeps the source transfer syntax when pydicom can write it back losslessly:
implicit and explicit VR little endian, explicit VR big endian, deflated, RLE Lossless,
JPEG 2000 Lossless and (with the pyjpegls plugin) JPEG-LS Lossless. Every other source,
and YBR_FULL frames from JPEG 2000 or JPEG-LS, is decoded and written as RLE Lossless,
which adds no loss. A lossy source keeps its lossy history: Lossy Image Compression
stays or becomes "01", with the method and ratio of the source encoding when the header
did not record them.

Only the detector's copy of a frame is converted. The written pixels keep their own
representation: MONOCHROME1 is masked with its maximum, PALETTE COLOR with the index of
the darkest palette colour, and YBR_FULL (also YBR_FULL_422, upsampled by pydicom) with
(0, middle, middle). When the instance declares 2D regions in a Sequence of Ultrasound
Regions, the detector sees only those regions, so burned-in text and graphics outside
them cannot produce a detection.

Nothing read from a header is logged. Log lines carry sizes, frame counts, transfer
syntax names and decisions only.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import cv2
import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, iter_pixels
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders import (
    JPEG2000LosslessEncoder,
    JPEGLSLosslessEncoder,
    RLELosslessEncoder,
)
from pydicom.pixels.encoders.base import Encoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from service.config import Settings
from service.masking import MaskSpec
from service.pipeline import (
    FailureReason,
    FrameCheckFailedError,
    FrameOutcome,
    FramePipeline,
    FrameTracker,
)
from service.tracking import Decision

logger = logging.getLogger(__name__)

_INPUT_STATUS_CODES = frozenset({400, 413, 415, 422})

_NATIVE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
# Compressed syntaxes written back as they came, when pydicom has an encoder for them.
_LOSSLESS_ENCODERS: dict[UID, Encoder] = {
    RLELossless: RLELosslessEncoder,
    JPEG2000Lossless: JPEG2000LosslessEncoder,
    JPEGLSLossless: JPEGLSLosslessEncoder,
}
_FALLBACK_SYNTAX = RLELossless

# Lossy Image Compression Method (0028,2114) of each syntax that may compress lossily.
# JPEG baseline and extended are always lossy. The others may also hold lossless data,
# so they count as lossy unless the header says Lossy Image Compression "00".
_LOSSY_METHODS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000
    "1.2.840.10008.1.2.4.93": "ISO_15444_2",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # High-Throughput JPEG 2000
}
_ALWAYS_LOSSY = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})

_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
_YBR_DECODED_RAW = frozenset({"YBR_FULL", "YBR_FULL_422"})
_SUPPORTED_PHOTOMETRIC = frozenset(
    {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422"}
    | {"YBR_ICT", "YBR_RCT"}
)

# Private binary values of this size or more are removed, because they could contain a
# vendor's preview of the unmasked image. A 64×64 8-bit icon is 4 KiB.
# NOTE: a smaller private preview would pass; the size is a judgement, not a standard.
_PRIVATE_BINARY_LIMIT_BYTES = 4096
_BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})

# Attributes that describe the old pixel encoding, sign the old content, or carry pixels.
_ATTRIBUTES_DROPPED = (
    0x00880200,  # Icon Image Sequence: an unmasked thumbnail
    0x7FE00001,  # Extended Offset Table
    0x7FE00002,  # Extended Offset Table Lengths
    0x7FE00010,  # Pixel Data, replaced
    0x4FFE0001,  # MAC Parameters Sequence
    0xFFFAFFFA,  # Digital Signatures Sequence
    0xFFFCFFFC,  # Data Set Trailing Padding
)

_PURPOSE_OF_REFERENCE = codes.DCM.SourceImageForImageProcessingOperation  # DCM 121322

_IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["sonomask DICOM writer"])


class DicomInputError(ValueError):
    """Invalid DICOM input. `status_code` is the HTTP status to return: 400, 413, 415 or 422."""

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        if status_code not in _INPUT_STATUS_CODES:
            raise ValueError(f"status_code must be one of 400, 413, 415, 422, got {status_code}")
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class MaskedInstance:
    """The masked, derived instance and what happened to its frames."""

    data: bytes  # a complete DICOM Part 10 file
    frames: int
    decisions: dict[str, int]  # Decision value -> frame count
    transfer_syntax_uid: str
    lossy: bool  # the output carries lossy compression history (Lossy Image Compression "01")


async def mask_instance(
    data: bytes,
    pipeline: FramePipeline,
    *,
    spec: MaskSpec | None,
    new_tracker: Callable[[], FrameTracker] | None,
    blank_on_failure: bool,
    settings: Settings,
) -> MaskedInstance:
    """Mask every frame of a DICOM image instance and return the derived instance.

    Raises DicomInputError for input that is not a readable DICOM image, and
    FrameCheckFailedError when a frame could not be checked and `blank_on_failure` is
    False. With `blank_on_failure` True such a frame is blanked whole with a notice.
    """
    received_s = time.monotonic()
    _quiet_pydicom_validation()
    source = await asyncio.to_thread(_read_source, data, settings)
    writer = _FrameWriter.for_source(source)
    tracker = new_tracker() if new_tracker is not None else None

    outcomes, encoded = await _mask_frames(
        data, source, writer, pipeline, spec, tracker, blank_on_failure
    )

    decisions = _count_decisions(outcomes)
    output, lossy = await asyncio.to_thread(
        _build_instance, source, writer, encoded, decisions, pipeline.model_id, settings
    )
    for outcome in outcomes:
        pipeline.record("dicom", outcome, received_s)
    logger.info(
        "masked DICOM instance: %d frame(s) of %dx%d, %s -> %s, %d bytes in, %d bytes out, %s",
        source.frames,
        source.columns,
        source.rows,
        source.transfer_syntax.name,
        writer.transfer_syntax.name,
        len(data),
        len(output),
        decisions,
    )
    return MaskedInstance(
        data=output,
        frames=source.frames,
        decisions=decisions,
        transfer_syntax_uid=str(writer.transfer_syntax),
        lossy=lossy,
    )


async def _mask_frames(
    data: bytes,
    source: _Source,
    writer: _FrameWriter,
    pipeline: FramePipeline,
    spec: MaskSpec | None,
    tracker: FrameTracker | None,
    blank_on_failure: bool,
) -> tuple[list[FrameOutcome], list[bytes]]:
    """Check, mask and encode every frame in order; return the outcomes and encoded frames.

    Only one decoded frame is held at a time, plus the one being encoded.
    """
    reader = _FrameReader(data, source)
    outcomes: list[FrameOutcome] = []
    encoded: list[bytes] = []
    decoding: asyncio.Future[tuple[np.ndarray, np.ndarray]] = asyncio.ensure_future(
        asyncio.to_thread(reader.next_frame)
    )
    encoding: asyncio.Future[bytes] | None = None
    try:
        # The tracker must get the frames in order, so they go to the detector one at a
        # time. Decoding the next frame and encoding the previous one overlap with it.
        # NOTE: a cine therefore never fills a detector batch by itself. Running
        # detection ahead and applying the tracker afterwards would need the pipeline to
        # expose its tracking step.
        for index in range(source.frames):
            native, frame_bgr = await decoding
            if index + 1 < source.frames:
                decoding = asyncio.ensure_future(asyncio.to_thread(reader.next_frame))

            outcome = await pipeline.run(frame_bgr, spec=spec, tracker=tracker)
            if outcome.blanked and not blank_on_failure:
                raise FrameCheckFailedError(
                    outcome.failure or FailureReason.DETECTOR_ERROR,
                    f"frame {index + 1} of {source.frames} could not be checked: "
                    f"{outcome.failure_detail}",
                )
            outcomes.append(outcome)

            if encoding is not None:
                encoded.append(await encoding)
            encoding = asyncio.ensure_future(
                asyncio.to_thread(_mask_and_encode, source.native, writer, outcome, native)
            )
        if encoding is not None:
            encoded.append(await encoding)
    finally:
        for pending in (decoding, encoding):
            if pending is not None and not pending.done():
                pending.cancel()
    return outcomes, encoded


def _quiet_pydicom_validation() -> None:
    # pydicom's value validation warns and logs with the offending value quoted, which
    # would put header values (names, dates, UIDs) into the service's logs. Values are
    # passed through unchanged here, so nothing is lost by not validating them.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def _count_decisions(outcomes: list[FrameOutcome]) -> dict[str, int]:
    counts = {decision.value: 0 for decision in Decision}
    for outcome in outcomes:
        counts[outcome.decision.value] += 1
    return counts


# Reading and checking the source


@dataclass(frozen=True)
class _Source:
    """The parsed header of a source instance, checked, with its pixel data removed."""

    dataset: Dataset
    transfer_syntax: UID
    frames: int
    rows: int
    columns: int
    photometric: str
    native: _NativeFormat
    lossy_method: str | None  # set when the source encoding is lossy and not yet recorded
    compression_ratio: float | None
    inflated: Dataset | None  # the whole dataset, for deflated sources only


def _read_source(data: bytes, settings: Settings) -> _Source:
    """Parse and check a DICOM Part 10 file, without decoding its pixel data."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise DicomInputError(
            "the body is not a DICOM Part 10 file: the 'DICM' prefix at byte 128 is missing",
            status_code=415,
        )

    dataset = _parse(data)
    transfer_syntax = _check_transfer_syntax(dataset)
    inflated = None
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        # pydicom decodes frames of a deflated file only from a fully read dataset.
        inflated = _parse(data, defer=False)

    _check_has_pixels(dataset)
    _check_identity(dataset)
    rows, columns, frames = _check_dimensions(dataset, settings)
    photometric = _check_pixel_description(dataset)
    native = _NativeFormat.for_dataset(dataset, rows, columns)

    lossy_method, ratio = _pending_lossy_record(dataset, transfer_syntax, rows, columns, frames)
    for tag in _ATTRIBUTES_DROPPED:
        if tag in dataset:
            del dataset[tag]
    return _Source(
        dataset=dataset,
        transfer_syntax=transfer_syntax,
        frames=frames,
        rows=rows,
        columns=columns,
        photometric=photometric,
        native=native,
        lossy_method=lossy_method,
        compression_ratio=ratio,
        inflated=inflated,
    )


def _parse(data: bytes, *, defer: bool = True) -> Dataset:
    try:
        # Deferring large values keeps native pixel data out of memory until a frame is read.
        dataset = pydicom.dcmread(io.BytesIO(data), defer_size="256 KB" if defer else None)
        _check_complete(dataset)
        _convert_elements(dataset)
        return dataset
    except DicomInputError:
        raise
    except InvalidDicomError as exc:
        raise DicomInputError(f"the DICOM header is invalid: {exc}", status_code=400) from None
    except Exception as exc:  # pydicom raises many types for a cut or corrupt header
        raise DicomInputError(
            f"the DICOM header could not be parsed ({type(exc).__name__}); "
            "the file may be truncated or corrupt",
            status_code=400,
        ) from None


def _convert_elements(dataset: Dataset) -> None:
    """Convert every raw element but the pixel data now, so that a corrupt value fails here
    rather than while the derived instance is written."""
    for tag in list(dataset.keys()):
        if tag == 0x7FE00010:
            continue
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value or []:
                _convert_elements(item)


def _check_transfer_syntax(dataset: Dataset) -> UID:
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if not transfer_syntax:
        raise DicomInputError("the file meta information has no Transfer Syntax UID")
    transfer_syntax = UID(str(transfer_syntax))
    if not transfer_syntax.is_transfer_syntax:
        raise DicomInputError(
            f"Transfer Syntax UID {transfer_syntax} is not a known transfer syntax",
            status_code=415,
        )
    if transfer_syntax in _NATIVE_SYNTAXES:
        return transfer_syntax
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise DicomInputError(
            f"transfer syntax {transfer_syntax.name} is not supported; send the instance "
            "uncompressed, deflated, RLE, JPEG, JPEG-LS or JPEG 2000 encoded",
            status_code=415,
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise DicomInputError(
            f"transfer syntax {transfer_syntax.name} cannot be decoded here ({missing})",
            status_code=415,
        )
    return transfer_syntax


def _check_complete(dataset: Dataset) -> None:
    """Raise when the file ends inside an element: pydicom stops there without an error."""
    tags = list(dataset.keys())
    if not tags:
        raise DicomInputError("the data set is empty; the file may be truncated")
    last = dataset.get_item(tags[-1])
    declared = getattr(last, "length", None)
    value = getattr(last, "value", None)
    if not isinstance(declared, int) or declared == 0xFFFFFFFF:
        return  # undefined length, or an element pydicom has already converted
    if isinstance(value, bytes) and len(value) < declared:
        raise DicomInputError(
            f"the file ends inside element {last.tag}: {len(value)} of {declared} bytes; "
            "it is truncated"
        )


def _check_has_pixels(dataset: Dataset) -> None:
    if "PixelData" in dataset:
        return
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        raise DicomInputError(
            "float pixel data is not supported; send integer Pixel Data (7FE0,0010)",
            status_code=415,
        )
    sop_class = UID(str(dataset.get("SOPClassUID", "")))
    kind = sop_class.name if sop_class else "unknown"
    raise DicomInputError(
        f"the instance has no Pixel Data (7FE0,0010) to mask (SOP class: {kind})",
        status_code=422,
    )


def _check_identity(dataset: Dataset) -> None:
    """Raise unless the SOP Class and Instance UIDs are known.

    Missing ones are taken from the file meta information, because some writers leave them
    out of the data set.
    """
    pairs = (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    )
    for keyword, meta_keyword in pairs:
        if str(dataset.get(keyword, "")).strip():
            continue
        from_meta = str(dataset.file_meta.get(meta_keyword, "")).strip()
        if not from_meta:
            raise DicomInputError(
                f"the required attribute {keyword} is missing from the data set and the "
                "file meta information; the derived instance must reference its source",
                status_code=422,
            )
        setattr(dataset, keyword, UID(from_meta))


def _check_dimensions(dataset: Dataset, settings: Settings) -> tuple[int, int, int]:
    rows = _int_attribute(dataset, "Rows")
    columns = _int_attribute(dataset, "Columns")
    if rows < 1 or columns < 1:
        raise DicomInputError(
            f"Rows and Columns must be positive, got {rows}x{columns}", status_code=422
        )
    if rows * columns > settings.max_pixels:
        raise DicomInputError(
            f"a frame of {columns}x{rows} pixels exceeds the limit of {settings.max_pixels} pixels",
            status_code=413,
        )
    frames = _int_attribute(dataset, "NumberOfFrames", default=1)
    if frames < 1:
        raise DicomInputError(f"Number of Frames must be positive, got {frames}", status_code=422)
    if frames > settings.max_dicom_frames:
        raise DicomInputError(
            f"the instance has {frames} frames, more than the limit of "
            f"{settings.max_dicom_frames}; split the cine or raise SONOMASK_MAX_DICOM_FRAMES",
            status_code=413,
        )
    return rows, columns, frames


def _check_pixel_description(dataset: Dataset) -> str:
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise DicomInputError(
            f"Photometric Interpretation {photometric or '(missing)'} is not supported; "
            f"expected one of {', '.join(sorted(_SUPPORTED_PHOTOMETRIC))}",
            status_code=415,
        )
    samples = _int_attribute(dataset, "SamplesPerPixel", default=1)
    expected_samples = 1 if photometric in _MONOCHROME or photometric == "PALETTE COLOR" else 3
    if samples != expected_samples:
        raise DicomInputError(
            f"Samples per Pixel must be {expected_samples} for {photometric}, got {samples}",
            status_code=422,
        )
    bits_allocated = _int_attribute(dataset, "BitsAllocated")
    if bits_allocated not in (8, 16):
        raise DicomInputError(
            f"Bits Allocated {bits_allocated} is not supported; expected 8 or 16",
            status_code=415,
        )
    bits_stored = _int_attribute(dataset, "BitsStored", default=bits_allocated)
    if not 1 <= bits_stored <= bits_allocated:
        raise DicomInputError(
            f"Bits Stored must be within 1..{bits_allocated}, got {bits_stored}", status_code=422
        )
    if photometric == "PALETTE COLOR" and "RedPaletteColorLookupTableDescriptor" not in dataset:
        raise DicomInputError("a PALETTE COLOR image has no palette lookup tables", status_code=422)
    return photometric


def _int_attribute(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    value = dataset.get(keyword)
    if value is None or value == "":
        if default is not None:
            return default
        raise DicomInputError(f"the required attribute {keyword} is missing", status_code=422)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DicomInputError(
            f"the attribute {keyword} is not an integer", status_code=422
        ) from None


def _pending_lossy_record(
    dataset: Dataset, transfer_syntax: UID, rows: int, columns: int, frames: int
) -> tuple[str | None, float | None]:
    """Return the method and ratio of a lossy source encoding that the header does not record."""
    method = _LOSSY_METHODS.get(str(transfer_syntax))
    if method is None:
        return None, None
    declared = str(dataset.get("LossyImageCompression", "")).strip()
    if declared == "00" and str(transfer_syntax) not in _ALWAYS_LOSSY:
        return None, None
    if declared == "01" and dataset.get("LossyImageCompressionMethod"):
        return None, None

    samples = _int_attribute(dataset, "SamplesPerPixel", default=1)
    bytes_per_sample = _int_attribute(dataset, "BitsAllocated") // 8
    uncompressed_bytes = rows * columns * samples * bytes_per_sample * frames
    encoded = dataset.get("PixelData")
    encoded_bytes = len(encoded) if isinstance(encoded, bytes) and encoded else None
    ratio = uncompressed_bytes / encoded_bytes if encoded_bytes else None
    return method, ratio


# The decoded pixels of one instance


@dataclass(frozen=True)
class _NativeFormat:
    """The pixel layout of an instance's decoded frames, and the values of black and white.

    `decoded_photometric` is the Photometric Interpretation of the decoded frames, which
    is also the one written out. YBR_FULL and YBR_FULL_422 frames are decoded without
    colour conversion, which is faster and adds no rounding, and pydicom upsamples
    YBR_FULL_422 chroma, so both are written as YBR_FULL. JPEG 2000 decoders return RGB
    for YBR_ICT and YBR_RCT.
    """

    decoded_photometric: str
    raw: bool  # decode YBR frames without converting them to RGB
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    black: np.ndarray  # one value a sample
    white: np.ndarray
    palette_bgr: np.ndarray | None  # display colour of every index, for PALETTE COLOR
    detection_area: tuple[tuple[int, int, int, int], ...]  # (left, top, right, bottom)

    @classmethod
    def for_dataset(cls, dataset: Dataset, rows: int, columns: int) -> _NativeFormat:
        photometric = str(dataset.PhotometricInterpretation).strip()
        bits_allocated = int(dataset.BitsAllocated)
        bits_stored = int(dataset.get("BitsStored", bits_allocated) or bits_allocated)
        signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
        low = -(1 << (bits_stored - 1)) if signed else 0
        high = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1

        keeps_ybr = photometric in _YBR_DECODED_RAW
        palette_bgr = None
        if photometric in _MONOCHROME:
            decoded, samples = photometric, 1
            black, white = (high, low) if photometric == "MONOCHROME1" else (low, high)
            black_values, white_values = [black], [white]
        elif photometric == "PALETTE COLOR":
            decoded, samples = photometric, 1
            palette_bgr = _palette_bgr(dataset, bits_stored)
            luminance = palette_bgr.astype(np.float32) @ np.array([0.114, 0.587, 0.299])
            black_values = [int(np.argmin(luminance))]
            white_values = [int(np.argmax(luminance))]
        elif keeps_ybr:
            decoded, samples = "YBR_FULL", 3
            middle = 1 << (bits_stored - 1)
            black_values, white_values = [0, middle, middle], [high, middle, middle]
        else:
            decoded, samples = "RGB", 3
            black_values, white_values = [0, 0, 0], [high, high, high]

        dtype = _native_dtype(bits_allocated, signed)
        return cls(
            decoded_photometric=decoded,
            raw=keeps_ybr,
            samples=samples,
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            signed=signed,
            black=np.array(black_values, dtype=dtype),
            white=np.array(white_values, dtype=dtype),
            palette_bgr=palette_bgr,
            detection_area=_ultrasound_image_regions(dataset, rows, columns),
        )

    def detector_frame(self, native: np.ndarray) -> np.ndarray:
        """Return a BGR uint8 copy of a decoded frame for the detector.

        When the instance declares 2D regions in a Sequence of Ultrasound Regions, the
        copy is black outside them.
        """
        frame_bgr = self._display_bgr(native)
        if not self.detection_area:
            return frame_bgr
        visible = np.zeros(frame_bgr.shape[:2], dtype=bool)
        for left, top, right, bottom in self.detection_area:
            visible[top:bottom, left:right] = True
        frame_bgr[~visible] = 0
        return frame_bgr

    def _display_bgr(self, native: np.ndarray) -> np.ndarray:
        if self.palette_bgr is not None:
            # Index values above the table, possible when Bits Stored < Bits Allocated,
            # show the last entry, as a clamping palette lookup does.
            return self.palette_bgr[np.minimum(native, len(self.palette_bgr) - 1)]
        if self.samples == 1:
            grey = self._grey_uint8(native)
            if self.decoded_photometric == "MONOCHROME1":
                grey = 255 - grey
            return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        colour = self._colour_uint8(native)
        if self.decoded_photometric == "YBR_FULL":
            # OpenCV's full-range YCrCb is YBR_FULL with the chroma channels swapped.
            return cv2.cvtColor(colour[..., [0, 2, 1]], cv2.COLOR_YCrCb2BGR)
        return cv2.cvtColor(colour, cv2.COLOR_RGB2BGR)

    def _grey_uint8(self, native: np.ndarray) -> np.ndarray:
        if native.dtype == np.uint8:
            return native
        # Deeper or signed grey is stretched to the frame's own range: no VOI is needed
        # to find a region, only contrast.
        out = np.empty(native.shape, dtype=np.uint8)
        cv2.normalize(native, out, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
        return out

    def _colour_uint8(self, native: np.ndarray) -> np.ndarray:
        if native.dtype == np.uint8:
            return np.ascontiguousarray(native)
        shift = max(0, self.bits_stored - 8)
        return np.ascontiguousarray((native.astype(np.uint32) >> shift).astype(np.uint8))

    def render(self, outcome: FrameOutcome, native: np.ndarray) -> np.ndarray:
        """Mask a decoded frame in its own representation, or blank it with a notice."""
        if outcome.blanked:
            return self._blank(outcome, native)
        if self.samples == 1 or not np.any(self.black - self.black[0]):
            return outcome.render(native, fill_value=float(self.black[0]))
        # YBR black is (0, middle, middle), so each channel gets its own fill value.
        channels = [
            outcome.render(native[..., channel], fill_value=float(self.black[channel]))
            for channel in range(self.samples)
        ]
        return np.stack(channels, axis=-1)

    def _blank(self, outcome: FrameOutcome, native: np.ndarray) -> np.ndarray:
        # `render` blanks to zeros with the notice at the dtype's maximum, which is not
        # black and white for MONOCHROME1, signed, YBR, palette or under-filled 16-bit
        # pixels. The notice is drawn on 8-bit grey and mapped to this format's values.
        notice = outcome.render(np.zeros(native.shape[:2], dtype=np.uint8)) > 127
        out = np.empty_like(native)
        out[...] = self.black if self.samples > 1 else self.black[0]
        out[notice] = self.white if self.samples > 1 else self.white[0]
        return out


def _native_dtype(bits_allocated: int, signed: bool) -> type[np.integer[Any]]:
    if bits_allocated == 8:
        return np.int8 if signed else np.uint8
    return np.int16 if signed else np.uint16


def _palette_bgr(dataset: Dataset, bits_stored: int) -> np.ndarray:
    """Look up the BGR uint8 display colour of every possible index value."""
    indices = np.arange(1 << bits_stored, dtype=np.uint16 if bits_stored > 8 else np.uint8)
    try:
        rgb = apply_color_lut(indices, dataset)
    except (ValueError, KeyError, AttributeError, IndexError) as exc:
        raise DicomInputError(
            f"the palette lookup tables are invalid: {exc}", status_code=422
        ) from None
    if rgb.dtype != np.uint8:
        # 16-bit entries keep their top byte, unless every entry fits in 8 bits, as when a
        # writer stores 8-bit colours in 16-bit entries.
        shift = 8 if int(rgb.max()) > 255 else 0
        rgb = (rgb.astype(np.uint32) >> shift).astype(np.uint8)
    return np.ascontiguousarray(rgb[:, ::-1])


def _ultrasound_image_regions(
    dataset: Dataset, rows: int, columns: int
) -> tuple[tuple[int, int, int, int], ...]:
    """Boxes (left, top, right, bottom, exclusive) of the 2D image regions, if declared.

    Only regions with Region Spatial Format 1 (2D) count: M-mode, spectral Doppler and
    waveform regions show no anatomy to mask. An instance with no valid 2D region is
    searched whole.
    """
    regions = []
    for item in dataset.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            if int(item.get("RegionSpatialFormat", 0)) != 1:
                continue
            left = int(item.RegionLocationMinX0)
            top = int(item.RegionLocationMinY0)
            right = int(item.RegionLocationMaxX1) + 1
            bottom = int(item.RegionLocationMaxY1) + 1
        except (AttributeError, TypeError, ValueError):
            continue
        left, top = max(0, left), max(0, top)
        right, bottom = min(columns, right), min(rows, bottom)
        if right > left and bottom > top:
            regions.append((left, top, right, bottom))
    return tuple(regions)


class _FrameReader:
    """Decodes the frames of one instance in order, one at a time."""

    def __init__(self, data: bytes, source: _Source) -> None:
        self._source = source
        origin: Any = source.inflated if source.inflated is not None else io.BytesIO(data)
        self._frames: Iterator[np.ndarray] = iter_pixels(origin, raw=source.native.raw)
        self._index = 0

    def next_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Decode the next frame; return it with its BGR copy for the detector."""
        self._index += 1
        try:
            native = next(self._frames)
        except StopIteration:
            raise DicomInputError(
                f"the pixel data contains fewer frames than the {self._source.frames} "
                "declared in Number of Frames",
                status_code=400,
            ) from None
        except DicomInputError:
            raise
        except Exception as exc:  # decoders raise many types for cut or corrupt data
            raise DicomInputError(
                f"frame {self._index} could not be decoded ({type(exc).__name__}: {exc}); "
                "the pixel data may be truncated or corrupt",
                status_code=400,
            ) from None
        expected = (self._source.rows, self._source.columns)
        if native.shape[:2] != expected:
            raise DicomInputError(
                f"frame {self._index} decoded to {native.shape[:2]}, expected {expected}",
                status_code=400,
            )
        return native, self._source.native.detector_frame(native)


# Writing the derived instance


@dataclass(frozen=True)
class _FrameWriter:
    """Encodes masked frames in the output transfer syntax."""

    transfer_syntax: UID
    photometric: str
    encoder: Encoder | None  # None for native (uncompressed) syntaxes
    encoder_options: dict[str, Any]
    big_endian: bool
    bits_allocated: int
    planar_configuration: int | None  # None for one sample a pixel

    @classmethod
    def for_source(cls, source: _Source) -> _FrameWriter:
        native = source.native
        transfer_syntax = source.transfer_syntax
        encoder = None
        if transfer_syntax not in _NATIVE_SYNTAXES:
            candidate = _LOSSLESS_ENCODERS.get(transfer_syntax)
            # JPEG 2000 and JPEG-LS would need their own colour transforms for YBR_FULL.
            ybr_outside_rle = native.decoded_photometric == "YBR_FULL" and (
                transfer_syntax != RLELossless
            )
            if candidate is None or not candidate.is_available or ybr_outside_rle:
                transfer_syntax, candidate = _FALLBACK_SYNTAX, _LOSSLESS_ENCODERS[_FALLBACK_SYNTAX]
            encoder = candidate

        photometric = native.decoded_photometric
        if encoder is not None and transfer_syntax == JPEG2000Lossless and native.samples == 3:
            # The encoder applies the reversible colour transform when the photometric
            # interpretation passed to it is YBR_RCT.
            photometric = "YBR_RCT" if source.photometric == "YBR_RCT" else "RGB"
        planar_configuration = None
        if native.samples == 3:
            # The ultrasound image modules require colour-by-plane for YBR_FULL and
            # colour-by-pixel for RGB. Other image modules allow either.
            planar_configuration = 1 if photometric == "YBR_FULL" else 0

        options: dict[str, Any] = {}
        if encoder is not None:
            options = {
                "rows": source.rows,
                "columns": source.columns,
                "samples_per_pixel": native.samples,
                "bits_allocated": native.bits_allocated,
                "bits_stored": native.bits_stored,
                "pixel_representation": int(native.signed),
                "photometric_interpretation": photometric,
                "number_of_frames": 1,
            }
            if planar_configuration is not None:
                options["planar_configuration"] = planar_configuration
            if "pylibjpeg" in encoder.available_plugins and encoder is RLELosslessEncoder:
                # On a 2-core CPU, pylibjpeg-rle encoded a 640×480 RGB frame in 15 ms and
                # pydicom's own encoder in 95 ms.
                options["encoding_plugin"] = "pylibjpeg"
        return cls(
            transfer_syntax=transfer_syntax,
            photometric=photometric,
            encoder=encoder,
            encoder_options=options,
            big_endian=transfer_syntax == ExplicitVRBigEndian,
            bits_allocated=native.bits_allocated,
            planar_configuration=planar_configuration,
        )

    def encode(self, frame: np.ndarray) -> bytes:
        """Encode one frame as native little- or big-endian bytes, or as one fragment."""
        frame = np.ascontiguousarray(frame)
        if self.encoder is not None:
            return self.encoder.encode(frame, **self.encoder_options)
        if self.planar_configuration == 1:
            frame = frame.transpose(2, 0, 1)
        if frame.dtype.itemsize > 1:
            frame = frame.astype(frame.dtype.newbyteorder(">" if self.big_endian else "<"))
        return frame.tobytes()

    def pixel_data(self, frames: list[bytes]) -> tuple[bytes, str]:
        """Return the Pixel Data value and VR for the encoded frames."""
        if self.encoder is None:
            value = b"".join(frames)
            if len(value) % 2:
                value += b"\0"
            return value, "OB" if self.bits_allocated == 8 else "OW"
        # A Basic Offset Table contains 32-bit offsets, so larger data is written without one.
        has_offsets = sum(len(frame) + 8 for frame in frames) < 0xFFFFFFFF
        return encapsulate(frames, has_bot=has_offsets), "OB"


def _mask_and_encode(
    native_format: _NativeFormat, writer: _FrameWriter, outcome: FrameOutcome, native: np.ndarray
) -> bytes:
    rendered = native_format.render(outcome, native)
    try:
        return writer.encode(rendered)
    except (ValueError, RuntimeError) as exc:  # what pydicom's encoders raise for bad pixels
        raise DicomInputError(
            f"a masked frame could not be encoded as {writer.transfer_syntax.name}: {exc}",
            status_code=422,
        ) from None


def _derive_dataset(
    source: _Source,
    writer: _FrameWriter,
    encoded: list[bytes],
    decisions: dict[str, int],
    model_id: str,
    settings: Settings,
) -> Dataset:
    """Turn the source header into the derived instance, with the masked pixel data."""
    dataset = source.dataset
    original_sop_class = UID(str(dataset.get("SOPClassUID", "")))
    original_sop_instance = UID(str(dataset.get("SOPInstanceUID", "")))

    _drop_pixel_carriers(dataset)
    _set_pixel_data(dataset, source, writer, encoded)
    _record_lossy_history(dataset, source)

    instance_uid = generate_uid()
    dataset.SOPInstanceUID = instance_uid
    if not settings.dicom_keep_series or "SeriesInstanceUID" not in dataset:
        dataset.SeriesInstanceUID = _derived_series_uid(dataset, model_id)
    dataset.ImageType = _derived_image_type(dataset)
    dataset.DerivationDescription = _derivation_description(dataset, decisions, model_id)
    dataset.SourceImageSequence = _source_image_sequence(original_sop_class, original_sop_instance)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = original_sop_class
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = writer.transfer_syntax
    meta.ImplementationClassUID = _IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = f"SONOMASK_{_package_version()}"[:16]
    dataset.file_meta = meta
    return dataset


def _set_pixel_data(
    dataset: Dataset, source: _Source, writer: _FrameWriter, encoded: list[bytes]
) -> None:
    value, vr = writer.pixel_data(encoded)
    dataset.PixelData = value
    dataset["PixelData"].VR = vr
    dataset.PhotometricInterpretation = writer.photometric
    if writer.planar_configuration is not None:
        dataset.PlanarConfiguration = writer.planar_configuration


def _drop_pixel_carriers(dataset: Dataset) -> None:
    """Remove Icon Image Sequences at any depth and large private binary values."""
    for element in list(dataset):
        if element.tag == 0x00880200:
            del dataset[element.tag]
        elif element.VR == "SQ":
            for item in element.value or []:
                _drop_pixel_carriers(item)
        elif element.tag.is_private and element.VR in _BINARY_VRS:
            length = len(element.value) if isinstance(element.value, bytes | bytearray) else 0
            if length >= _PRIVATE_BINARY_LIMIT_BYTES:
                del dataset[element.tag]


def _record_lossy_history(dataset: Dataset, source: _Source) -> None:
    if source.lossy_method is None:
        return
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionMethod = source.lossy_method
    if source.compression_ratio is not None:
        dataset.LossyImageCompressionRatio = f"{source.compression_ratio:.2f}"[:16]


def _derived_series_uid(dataset: Dataset, model_id: str) -> UID:
    # Derived from the original series, so that the masked instances of one series
    # land together in one new series.
    original = str(dataset.get("SeriesInstanceUID", "")).strip()
    if not original:
        return generate_uid()
    return generate_uid(entropy_srcs=[original, "sonomask masked series", model_id])


def _derived_image_type(dataset: Dataset) -> list[str]:
    """Return Image Type with value 1 set to DERIVED and later values kept."""
    current = dataset.get("ImageType")
    if current is None or current == "":
        values = []
    elif isinstance(current, str):
        values = [current]
    else:
        values = [str(value) for value in current]
    if len(values) < 2:
        return ["DERIVED", "SECONDARY"]
    values[0] = "DERIVED"
    return values


def _derivation_description(dataset: Dataset, decisions: dict[str, int], model_id: str) -> str:
    counts = ", ".join(f"{count} {decision}" for decision, count in decisions.items())
    text = (
        f"Fetal genital region masked by sonomask {_package_version()} "
        f"with model {model_id}; frames: {counts}"
    )
    earlier = str(dataset.get("DerivationDescription", "")).strip()
    if earlier:
        text = f"{text}. Earlier: {earlier}"
    return text[:1024]  # the ST maximum


def _source_image_sequence(sop_class: UID, sop_instance: UID) -> DicomSequence:
    code = Dataset()
    code.CodeValue = _PURPOSE_OF_REFERENCE.value
    code.CodingSchemeDesignator = _PURPOSE_OF_REFERENCE.scheme_designator
    code.CodeMeaning = _PURPOSE_OF_REFERENCE.meaning
    reference = Dataset()
    reference.ReferencedSOPClassUID = sop_class
    reference.ReferencedSOPInstanceUID = sop_instance
    reference.PurposeOfReferenceCodeSequence = DicomSequence([code])
    return DicomSequence([reference])


def _build_instance(
    source: _Source,
    writer: _FrameWriter,
    encoded: list[bytes],
    decisions: dict[str, int],
    model_id: str,
    settings: Settings,
) -> tuple[bytes, bool]:
    """Write the derived instance as a Part 10 file; also return whether it records loss.

    NOTE: the encoded frames, the joined Pixel Data and the written file are in memory
    together, so the peak is about three times the output size.
    """
    try:
        dataset = _derive_dataset(source, writer, encoded, decisions, model_id, settings)
        encoded.clear()
        output = _write_part10(dataset)
    except Exception as exc:  # pydicom raises many types for values it cannot write back
        # The message of a writer error may quote a header value, so only its type is kept.
        raise DicomInputError(
            f"the derived instance could not be written ({type(exc).__name__}); "
            "a header attribute of the source may hold a value that cannot be encoded",
            status_code=422,
        ) from None
    return output, dataset.get("LossyImageCompression") == "01"


def _write_part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _package_version() -> str:
    try:
        return metadata.version("sonomask")
    except metadata.PackageNotFoundError:
        return "unknown"
