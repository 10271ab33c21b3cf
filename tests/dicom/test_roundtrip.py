"""Each source instance goes through the real pipeline and comes back as a derived instance."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from service.dicom import mask_instance
from service.pipeline import FramePipeline
from service.tracking import HoldConfig, Tracker

from .conftest import Case, decoded_frames, dicom_settings, read_header


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]  # type: ignore[attr-defined]


async def _mask(case: Case, pipeline: FramePipeline) -> tuple[bytes, object]:
    source = case.load()
    settings = dicom_settings()
    result = await mask_instance(
        source,
        pipeline,
        spec=None,
        new_tracker=lambda: Tracker(HoldConfig.from_settings(settings)),
        blank_on_failure=False,
        settings=settings,
    )
    return source, result


async def test_output_reads_back_and_decodes(case: Case, pipeline: FramePipeline) -> None:
    source, result = await _mask(case, pipeline)
    source_header = read_header(source)
    header = read_header(result.data)
    frames = decoded_frames(result.data)

    expected_frames = int(source_header.get("NumberOfFrames", 1) or 1)
    assert result.frames == expected_frames
    assert len(frames) == expected_frames
    assert header.Rows == source_header.Rows
    assert header.Columns == source_header.Columns
    assert int(header.get("NumberOfFrames", 1) or 1) == expected_frames
    assert sum(result.decisions.values()) == expected_frames
    assert header.file_meta.TransferSyntaxUID == case.output_syntax
    assert result.transfer_syntax_uid == case.output_syntax
    assert header.PhotometricInterpretation == case.photometric
    assert result.lossy is case.lossy
    assert (header.get("LossyImageCompression") == "01") is case.lossy


async def test_output_is_a_derived_instance(case: Case, pipeline: FramePipeline) -> None:
    source, result = await _mask(case, pipeline)
    original = read_header(source)
    derived = read_header(result.data)
    original_instance = (
        original.get("SOPInstanceUID") or original.file_meta.MediaStorageSOPInstanceUID
    )
    original_class = original.get("SOPClassUID") or original.file_meta.MediaStorageSOPClassUID

    assert derived.SOPInstanceUID != original_instance
    assert derived.file_meta.MediaStorageSOPInstanceUID == derived.SOPInstanceUID
    assert derived.SOPClassUID == original_class
    assert derived.file_meta.MediaStorageSOPClassUID == original_class
    assert derived.get("StudyInstanceUID") == original.get("StudyInstanceUID")
    assert derived.SeriesInstanceUID != original.get("SeriesInstanceUID")
    image_type = _values(derived.ImageType)
    assert image_type[0] == "DERIVED"
    if len(_values(original.get("ImageType"))) > 1:
        assert image_type[1:] == _values(original.ImageType)[1:]
    assert "sonomask" in derived.DerivationDescription
    assert pipeline.model_id in derived.DerivationDescription
    reference = derived.SourceImageSequence[0]
    assert reference.ReferencedSOPClassUID == original_class
    assert reference.ReferencedSOPInstanceUID == original_instance
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert "IconImageSequence" not in derived


async def test_other_attributes_are_kept(case: Case, pipeline: FramePipeline) -> None:
    source, result = await _mask(case, pipeline)
    original = read_header(source)
    derived = read_header(result.data)
    changed = {
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "ImageType",
        "DerivationDescription",
        "SourceImageSequence",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "IconImageSequence",
        "SOPClassUID",
    }
    for element in original:
        if element.keyword in changed or element.tag.is_private or element.tag.group >= 0x7FE0:
            continue
        if element.tag.element == 0:
            continue  # group lengths are retired and not written
        assert element.tag in derived, f"{element.keyword or element.tag} was dropped"
        assert derived[element.tag].value == element.value, f"{element.keyword} changed"


async def test_pixels_match_the_decoded_source(case: Case, pipeline: FramePipeline) -> None:
    """Outside the masked regions the output contains exactly the pixels pydicom decodes."""
    source, result = await _mask(case, pipeline)
    source_frames = decoded_frames(source)
    output_frames = decoded_frames(result.data)
    assert len(output_frames) == len(source_frames)

    for source_frame, output_frame in zip(source_frames, output_frames, strict=True):
        assert output_frame.shape == source_frame.shape
        assert output_frame.dtype == source_frame.dtype
        changed = source_frame != output_frame
        if result.decisions["clear"] == result.frames:
            assert not changed.any()
        elif changed.any():
            # The model found something in this frame: every changed pixel must now be the
            # fill. Other frames of a cine may be clear and come back unchanged.
            assert np.all(output_frame[changed] == output_frame[changed].min())


async def test_series_uid_is_shared_by_one_series(pipeline: FramePipeline) -> None:
    """Two masked instances of one series land in the same new series."""
    from .conftest import built_monochrome1, built_monochrome2

    first = await _mask(Case("a", built_monochrome2, UID(""), False, ""), pipeline)
    second = await _mask(Case("b", built_monochrome1, UID(""), False, ""), pipeline)
    first_header = read_header(first[1].data)
    second_header = read_header(second[1].data)

    assert first_header.SeriesInstanceUID == second_header.SeriesInstanceUID
    assert first_header.SOPInstanceUID != second_header.SOPInstanceUID


async def test_keep_series_setting_keeps_series(pipeline: FramePipeline) -> None:
    from .conftest import built_monochrome2

    source = built_monochrome2()
    settings = dicom_settings(dicom_keep_series=True)
    result = await mask_instance(
        source, pipeline, spec=None, new_tracker=None, blank_on_failure=False, settings=settings
    )

    assert read_header(result.data).SeriesInstanceUID == read_header(source).SeriesInstanceUID


async def test_lossy_source_records_its_method(pipeline: FramePipeline) -> None:
    from .conftest import built_jpeg2000_lossy

    source = built_jpeg2000_lossy()
    settings = dicom_settings()
    result = await mask_instance(
        source, pipeline, spec=None, new_tracker=None, blank_on_failure=False, settings=settings
    )
    header = read_header(result.data)

    assert header.LossyImageCompression == "01"
    assert header.LossyImageCompressionMethod == "ISO_15444_1"
    assert float(header.LossyImageCompressionRatio) > 1.0
    assert pydicom.uid.UID(result.transfer_syntax_uid).is_compressed


def _with_pixel_carriers() -> bytes:
    """US1 with an icon, an icon nested in a sequence, and large and small private values."""
    from .conftest import real_file, to_part10

    dataset = pydicom.dcmread(io.BytesIO(real_file("US1_UNCR.dcm")))
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel = 8, 8, 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(64))
    dataset.IconImageSequence = Sequence([icon])
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = dataset.SOPClassUID
    referenced.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    referenced.IconImageSequence = Sequence([icon])
    dataset.ReferencedImageSequence = Sequence([referenced])
    block = dataset.private_block(0x0011, "SONOMASK TEST", create=True)
    block.add_new(0x01, "OB", bytes(8192))
    block.add_new(0x02, "OB", bytes(16))
    return to_part10(dataset)


async def test_pixel_carriers_are_removed(pipeline: FramePipeline) -> None:
    source = _with_pixel_carriers()
    result = await mask_instance(
        source,
        pipeline,
        spec=None,
        new_tracker=None,
        blank_on_failure=False,
        settings=dicom_settings(),
    )
    derived = read_header(result.data)
    block = derived.private_block(0x0011, "SONOMASK TEST")

    assert "IconImageSequence" not in derived
    assert "IconImageSequence" not in derived.ReferencedImageSequence[0]
    assert "ReferencedSOPInstanceUID" in derived.ReferencedImageSequence[0]
    assert 0x01 not in block
    assert block[0x02].value == bytes(16)
