"""Image decoding and encoding for the REST path, with the limits that protect the service.

`decode_image` turns JPEG or PNG bytes into the image's own pixel array (8-bit grey,
16-bit grey, RGB or RGBA, upright by EXIF orientation) plus a BGR uint8 copy for the
detector. `encode_image` writes the masked array back in the same format. Nothing is
written to disk.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin

# Pillow's own bomb check would warn or raise at its own limit; the service applies `max_pixels`.
Image.MAX_IMAGE_PIXELS = None

JPEG_QUALITY = 95
# zlib level 1 with the SUB row filter only. libpng's default tries every filter on every
# row, which made encoding 640×480 and 800×540 ultrasound stills about 40 % slower for at
# most 8 % fewer bytes (OpenCV 5.1 on 2 CPU cores). Older OpenCV builds lack the filter flag.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


class ImageFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


MEDIA_TYPES = {
    "image/jpeg": ImageFormat.JPEG,
    "image/jpg": ImageFormat.JPEG,
    "image/pjpeg": ImageFormat.JPEG,
    "image/png": ImageFormat.PNG,
}

_SIGNATURES = {
    ImageFormat.JPEG: b"\xff\xd8\xff",
    ImageFormat.PNG: b"\x89PNG\r\n\x1a\n",
}

# PNG chunks that carry pixels or colour information and nothing else. Text, EXIF, ICC
# profiles, animation frames and private chunks are absent from this set.
_PIXEL_ONLY_PNG_CHUNKS = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs"}
)

# Each format is opened with its own Pillow class, never through `Image.open`, because
# importing ultralytics (8.4) replaces `Image.open` with a wrapper that handles a file Pillow
# cannot identify by calling its requirement check for pi-heif and importing it. Offline
# that raises ModuleNotFoundError (a 500). With network access it runs pip install inside
# a request.
_IMAGE_CLASSES: dict[ImageFormat, type[ImageFile.ImageFile]] = {
    ImageFormat.JPEG: JpegImagePlugin.JpegImageFile,
    ImageFormat.PNG: PngImagePlugin.PngImageFile,
}


class ImageInputError(ValueError):
    """An image the service cannot take; `status_code` is the HTTP status to return."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    """An upright image in its own pixel format, and the detector's BGR uint8 copy."""

    format: ImageFormat
    pixels: np.ndarray  # H×W (L, I;16) or H×W×3 (RGB) or H×W×4 (RGBA)
    mode: str  # Pillow mode of `pixels`: L, I;16, RGB or RGBA
    bgr: np.ndarray  # H×W×3 uint8

    @property
    def size_wh(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def format_for_media_type(media_type: str) -> ImageFormat:
    """Map a Content-Type to an image format, or raise 415 naming what is supported."""
    base = media_type.split(";")[0].strip().lower()
    image_format = MEDIA_TYPES.get(base)
    if image_format is None:
        raise ImageInputError(
            415,
            f"unsupported Content-Type {base or '(none)'!r}: send image/jpeg, image/png "
            "or application/dicom",
        )
    return image_format


def decode_image(data: bytes, image_format: ImageFormat, *, max_pixels: int) -> DecodedImage:
    """Decode and check an image; raises ImageInputError with the status to return."""
    if not data:
        raise ImageInputError(400, "the request body is empty: send the image bytes")
    if not data.startswith(_SIGNATURES[image_format]):
        raise ImageInputError(
            400, f"the body is not a {image_format.name} file (its first bytes do not match)"
        )

    try:
        image = _IMAGE_CLASSES[image_format](io.BytesIO(data))
    except (SyntaxError, OSError, ValueError) as exc:
        raise ImageInputError(
            400, f"the {image_format.name} data is broken or truncated: unreadable header ({exc})"
        ) from None

    width, height = image.size
    if width < 1 or height < 1:
        raise ImageInputError(422, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageInputError(
            413,
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} (SONOMASK_MAX_PIXELS)",
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            upright = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(
            400, f"the {image_format.name} data is broken or truncated: {exc}"
        ) from None

    pixels, mode = _native_pixels(upright)
    return DecodedImage(image_format, pixels, mode, _to_bgr(pixels, mode))


def encode_image(pixels: np.ndarray, mode: str, image_format: ImageFormat) -> bytes:
    """Encode pixels in `mode` as JPEG or PNG. EXIF and other metadata are not copied."""
    if image_format is ImageFormat.JPEG:
        if mode == "RGBA":
            pixels = pixels[..., :3]
        if pixels.ndim == 3:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        ok, buffer = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    else:
        if pixels.ndim == 3:
            code = cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR
            pixels = cv2.cvtColor(pixels, code)
        ok, buffer = cv2.imencode(".png", pixels, PNG_PARAMS)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image_format.name} image")
    return buffer.tobytes()


def png_has_only_pixel_chunks(data: bytes) -> bool:
    """True when a PNG contains only pixel and colour chunks, and no bytes after IEND.

    Such a file can be returned byte for byte when nothing in it was masked: it shows the
    pixels the detector checked and carries no metadata that re-encoding would remove.
    """
    if not data.startswith(_SIGNATURES[ImageFormat.PNG]):
        return False
    offset = len(_SIGNATURES[ImageFormat.PNG])
    while offset + 12 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind not in _PIXEL_ONLY_PNG_CHUNKS:
            return False
        offset += 12 + length  # length, type and CRC fields around the chunk data
        if kind == b"IEND":
            return offset == len(data)
    return False


def opaque_regions(pixels: np.ndarray, regions: list[tuple[int, int, int, int]]) -> None:
    """Make the alpha channel opaque inside masked regions, so a mask is never see-through."""
    if pixels.ndim != 3 or pixels.shape[2] != 4:
        return
    for left, top, right, bottom in regions:
        pixels[top:bottom, left:right, 3] = 255


def _native_pixels(image: Image.Image) -> tuple[np.ndarray, str]:
    """Convert the image to a numpy array in one of the four modes the service masks in."""
    mode = image.mode
    if mode in {"L", "RGB", "RGBA"}:
        return np.asarray(image), mode
    if mode in {"I;16", "I;16B", "I;16L"}:
        return np.asarray(image, dtype=np.uint16), "I;16"
    if mode == "I":
        # Pillow opens 16-bit PNGs as 32-bit "I"; their values still fit in 16 bits.
        array = np.asarray(image)
        return np.clip(array, 0, 65535).astype(np.uint16), "I;16"
    if mode == "1":
        return np.asarray(image.convert("L")), "L"
    if (mode in {"LA", "PA", "P"} and "transparency" in image.info) or mode in {"LA", "PA"}:
        return np.asarray(image.convert("RGBA")), "RGBA"
    return np.asarray(image.convert("RGB")), "RGB"


def _to_bgr(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode == "I;16":
        peak = int(pixels.max()) if pixels.size else 0
        scale = 255.0 / peak if peak > 255 else 1.0
        grey = (pixels.astype(np.float32) * scale).clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if mode == "L":
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if mode == "RGBA":
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGR)
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
