"""Bounded fuzzing: the image decoder on arbitrary and mutated bytes.

Any input must give a decoded image or `ImageInputError`. Any other exception would reach
the client as a 500.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.hardening.make_corpus import jpeg_bytes, jpeg_cmyk, jpeg_exif_rotated, png_bytes
from service.codecs import DecodedImage, ImageFormat, ImageInputError, decode_image

MAX_PIXELS = 4_000_000
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

SEEDS = {
    ImageFormat.JPEG: [jpeg_bytes(24, 16), jpeg_bytes(17, 9, progressive=True), jpeg_cmyk()],
    ImageFormat.PNG: [png_bytes(24, 16), png_bytes(3, 5)],
}
SEEDS[ImageFormat.JPEG].append(jpeg_exif_rotated(6, 20, 10))
SIGNATURES = {ImageFormat.JPEG: b"\xff\xd8\xff", ImageFormat.PNG: b"\x89PNG\r\n\x1a\n"}


def check_decoded_or_refused(data: bytes, image_format: ImageFormat) -> None:
    try:
        decoded = decode_image(data, image_format, max_pixels=MAX_PIXELS)
    except ImageInputError as exc:
        assert 400 <= exc.status_code < 500
        assert exc.message
        return
    assert isinstance(decoded, DecodedImage)
    width, height = decoded.size_wh
    assert 0 < width * height <= MAX_PIXELS
    assert decoded.bgr.shape == (height, width, 3)
    assert decoded.bgr.dtype == np.uint8


@st.composite
def mutated(draw: st.DrawFn, image_format: ImageFormat) -> bytes:
    """A valid image with bytes flipped, cut, or spliced in."""
    data = bytearray(draw(st.sampled_from(SEEDS[image_format])))
    for _ in range(draw(st.integers(1, 8))):
        operation = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "cut":
            data = data[:position]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        else:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[position : position + len(chunk)] = chunk
    return bytes(data)


@pytest.mark.parametrize("image_format", list(ImageFormat))
@FUZZ
@given(data=st.binary(max_size=4096))
def test_decoder_any_bytes(image_format: ImageFormat, data: bytes) -> None:
    check_decoded_or_refused(data, image_format)


@pytest.mark.parametrize("image_format", list(ImageFormat))
@FUZZ
@given(tail=st.binary(max_size=2048))
def test_decoder_signature_then_bytes(image_format: ImageFormat, tail: bytes) -> None:
    check_decoded_or_refused(SIGNATURES[image_format] + tail, image_format)


@FUZZ
@given(data=mutated(ImageFormat.JPEG))
def test_decoder_mutated_jpeg(data: bytes) -> None:
    check_decoded_or_refused(data, ImageFormat.JPEG)


@FUZZ
@given(data=mutated(ImageFormat.PNG))
def test_decoder_mutated_png(data: bytes) -> None:
    check_decoded_or_refused(data, ImageFormat.PNG)


@pytest.mark.parametrize("image_format", list(ImageFormat))
def test_decoder_unaffected_by_ultralytics(image_format: ImageFormat) -> None:
    """Importing ultralytics replaces `PIL.Image.open`; unidentified data must still give a 400."""
    import ultralytics  # noqa: F401  (the import applies the replacement)

    with pytest.raises(ImageInputError) as raised:
        decode_image(SIGNATURES[image_format] + b"\x00" * 8, image_format, max_pixels=MAX_PIXELS)
    assert raised.value.status_code == 400
