"""Generate the bad-input corpus: awkward and broken images, uploads, DICOM files and offers.

Every case is built in memory from code, so the corpus needs no stored blobs. Each case
names the route it targets, the request to send and the statuses a correct service may
return: 200 for a valid but awkward image, a 4xx with a reason for everything else, and
never a 5xx.

    python -m scripts.hardening.make_corpus --out /tmp/corpus

writes one body file per case plus `index.json` (route, content type, expected statuses),
for replaying the corpus by hand with curl.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

MASK_ROUTE = "/v1/mask"
DETECT_ROUTE = "/v1/detect"
STREAMS_ROUTE = "/v1/streams"

OK = frozenset({200})
BAD_REQUEST = frozenset({400})
TOO_LARGE = frozenset({413})
UNSUPPORTED = frozenset({415})
UNPROCESSABLE = frozenset({422})

# A build without the DICOM reader rejects DICOM with 415, and one with the reader rejects a
# broken instance with 400 or 422. No build may return a 200 or a 5xx for these cases.
DICOM_REJECTED = frozenset({400, 413, 415, 422})

# Stream offers: 400 for malformed SDP or JSON, 413 for size, 422 for a valid offer the
# service cannot use.
OFFER_REJECTED = frozenset({400, 413, 422})

# The stream route caps the SDP at 64 KiB.
OFFER_SDP_LIMIT_BYTES = 64 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Case:
    """One request of the corpus and the statuses a correct service may return for it."""

    name: str
    body: bytes
    content_type: str | None  # None: send no Content-Type header at all
    expected_statuses: frozenset[int]
    route: str = MASK_ROUTE
    query: dict[str, str] = field(default_factory=dict)
    # Width and height of the image a 200 must return, when the input is an image.
    size_wh: tuple[int, int] | None = None
    kind: str = "image"  # image, multipart, dicom or offer

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.content_type is None else {"Content-Type": self.content_type}


# Image builders


def gradient_rgb(width: int, height: int) -> np.ndarray:
    """Build an RGB test card whose three channels differ, so channel swaps and flips show."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // max(width - 1, 1)
    green = y * 255 // max(height - 1, 1)
    blue = (x + 2 * y) % 256
    return np.dstack([red, green, blue]).astype(np.uint8)


def encode_pil(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48, **options: object) -> bytes:
    return encode_pil(Image.fromarray(gradient_rgb(width, height)), "JPEG", quality=90, **options)


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    return encode_pil(Image.fromarray(gradient_rgb(width, height)), "PNG")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def zlib_zeros(length: int) -> bytes:
    """Build a zlib stream that inflates to `length` zero bytes, in milliseconds.

    After a full flush, deflate blocks do not refer back to earlier data, so one compressed
    MiB of zeros can be repeated as often as needed. The Adler-32 of n zero bytes is
    (n mod 65521) << 16 | 1.
    """
    chunk_bytes = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b"\x00" * chunk_bytes) + compressor.flush(zlib.Z_FULL_FLUSH)
    full_chunks, rest = divmod(length, chunk_bytes)
    tail = compressor.compress(b"\x00" * rest) + compressor.flush(zlib.Z_FINISH)
    adler = ((length % 65521) << 16) | 1
    return b"\x78\xda" + block * full_chunks + tail + struct.pack(">I", adler)


def raw_png(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    colour_type: int = 0,
    scanlines: bytes | None = None,
    idat: bytes | None = None,
    extra_chunks: tuple[bytes, ...] = (),
    interlace: int = 0,
) -> bytes:
    """Write a PNG chunk by chunk, for the depths and layouts Pillow does not write.

    Image data comes from `idat` (already compressed), else from `scanlines`, else it is
    all-zero rows, which compress to almost nothing: with a large `width` and `height`
    that makes a decompression bomb.
    """
    if idat is None and scanlines is not None:
        idat = zlib.compress(scanlines, 9)
    if idat is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
        row_bytes = (width * channels * bit_depth + 7) // 8
        idat = zlib_zeros((row_bytes + 1) * height)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    return (
        _PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + b"".join(extra_chunks)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_16bit_rgb(width: int = 40, height: int = 30) -> bytes:
    """Build a 48-bit RGB PNG with a ramp that uses the high byte of every sample."""
    rows = []
    for y in range(height):
        samples = np.array([[x * 1500, y * 2000, (x + y) * 900] for x in range(width)], dtype=">u2")
        rows.append(b"\x00" + samples.tobytes())
    return raw_png(width, height, bit_depth=16, colour_type=2, scanlines=b"".join(rows))


def png_adam7(width: int = 33, height: int = 21) -> bytes:
    """Build an Adam7-interlaced grey PNG, which Pillow reads but does not write."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]
    passes.append((0, 1, 1, 2))
    data = bytearray()
    for x0, y0, dx, dy in passes:
        columns = range(x0, width, dx)
        for y in range(y0, height, dy):
            if not columns:
                break
            data.append(0)
            data.extend((x * 7 + y * 3) % 256 for x in columns)
    return raw_png(width, height, scanlines=bytes(data), interlace=1)


def png_text_bomb() -> bytes:
    """Build a small PNG whose zTXt chunk inflates to 64 MiB of text."""
    chunk = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib_zeros(64 * 1024 * 1024))
    return raw_png(16, 16, extra_chunks=(chunk,))


def png_bad_crc() -> bytes:
    data = bytearray(png_bytes(32, 24))
    # The IHDR CRC is at bytes 29..32. Flip one bit of it.
    data[30] ^= 0x01
    return bytes(data)


def jpeg_with_size(width: int, height: int) -> bytes:
    """Build a small real JPEG and rewrite its SOF marker to claim `width` × `height`."""
    data = bytearray(jpeg_bytes(16, 16))
    index = 2
    while index < len(data) - 9:
        marker = data[index + 1]
        length = struct.unpack(">H", data[index + 2 : index + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[index + 5 : index + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        index += 2 + length
    raise ValueError("no SOF marker in the generated JPEG")


def jpeg_exif_rotated(orientation: int, width: int = 60, height: int = 30) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.fromarray(gradient_rgb(width, height))
    return encode_pil(image, "JPEG", quality=90, exif=exif.tobytes())


def jpeg_cmyk(width: int = 48, height: int = 32) -> bytes:
    image = Image.fromarray(gradient_rgb(width, height)).convert("CMYK")
    return encode_pil(image, "JPEG", quality=90)


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# Multipart builders


def multipart(
    parts: list[tuple[dict[str, str], bytes]], boundary: str = "corpus-boundary"
) -> bytes:
    """Build a multipart body from (headers, payload) parts, with CRLF line ends."""
    out = bytearray()
    for headers, payload in parts:
        out += f"--{boundary}\r\n".encode()
        for key, value in headers.items():
            out += f"{key}: {value}\r\n".encode()
        out += b"\r\n" + payload + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def file_part(
    payload: bytes, content_type: str | None, name: str = "file", filename: str = "frame.png"
) -> tuple[dict[str, str], bytes]:
    headers = {"Content-Disposition": f'form-data; name="{name}"; filename="{filename}"'}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers, payload


MULTIPART = "multipart/form-data; boundary=corpus-boundary"


# The corpus


def image_cases() -> Iterator[Case]:
    """Broken, mislabelled, oversized and awkward-but-valid JPEG and PNG bodies."""
    jpeg = jpeg_bytes()
    png = png_bytes()
    yield Case("empty body as jpeg", b"", "image/jpeg", BAD_REQUEST)
    yield Case("empty body as png", b"", "image/png", BAD_REQUEST)
    # Cut points are fractions of the data before the end marker (JPEG EOI, PNG IEND chunk).
    # A cut near the end may remove only the zlib checksum and leave every pixel readable,
    # so there a 200 with the full image is also correct.
    for fraction in (0.05, 0.5, 0.95):
        expected = BAD_REQUEST if fraction < 0.9 else frozenset({200, 400})
        cut = max(4, int((len(jpeg) - 2) * fraction))
        yield Case(
            f"jpeg truncated at {fraction:.0%}",
            jpeg[:cut],
            "image/jpeg",
            expected,
            size_wh=(64, 48),
        )
        cut = max(9, int((len(png) - 12) * fraction))
        yield Case(
            f"png truncated at {fraction:.0%}", png[:cut], "image/png", expected, size_wh=(64, 48)
        )
    yield Case("jpeg signature only", b"\xff\xd8\xff", "image/jpeg", BAD_REQUEST)
    yield Case("png signature only", _PNG_SIGNATURE, "image/png", BAD_REQUEST)
    yield Case("random bytes as jpeg", random_bytes(4096, 1), "image/jpeg", BAD_REQUEST)
    yield Case("random bytes as png", random_bytes(4096, 2), "image/png", BAD_REQUEST)
    yield Case(
        "jpeg signature then noise",
        b"\xff\xd8\xff\xe0" + random_bytes(4096, 3),
        "image/jpeg",
        BAD_REQUEST,
    )
    yield Case(
        "png signature then noise", _PNG_SIGNATURE + random_bytes(4096, 4), "image/png", BAD_REQUEST
    )
    yield Case("png labelled jpeg", png, "image/jpeg", BAD_REQUEST)
    yield Case("jpeg labelled png", jpeg, "image/png", BAD_REQUEST)
    yield Case("png with a bad header crc", png_bad_crc(), "image/png", BAD_REQUEST)
    yield Case(
        "png with garbage image data",
        raw_png(32, 32, scanlines=random_bytes(900, 5)),
        "image/png",
        BAD_REQUEST,
    )
    yield Case("png of zero width", raw_png(0, 10), "image/png", frozenset({400, 422}))
    yield Case("jpeg of zero height", jpeg_with_size(16, 0), "image/jpeg", frozenset({400, 422}))

    # Limits: headers claim far more pixels than SONOMASK_MAX_PIXELS allows.
    yield Case("png pixel bomb 20000x20000", raw_png(20000, 20000), "image/png", TOO_LARGE)
    yield Case(
        "png pixel bomb 1x2**31",
        raw_png(1, 2**31 - 1, idat=zlib_zeros(64 * 1024 * 1024)),
        "image/png",
        TOO_LARGE,
    )
    yield Case("jpeg pixel bomb 65500x65500", jpeg_with_size(65500, 65500), "image/jpeg", TOO_LARGE)
    yield Case(
        "png text chunk bomb", png_text_bomb(), "image/png", frozenset({200, 400}), size_wh=(16, 16)
    )

    # Valid but awkward: each must come back masked in its own format and size.
    awkward: list[tuple[str, bytes, str, tuple[int, int]]] = [
        (
            "png 16-bit grey",
            encode_pil(Image.fromarray(_ramp16(50, 40)), "PNG"),
            "image/png",
            (50, 40),
        ),
        ("png 16-bit rgb", png_16bit_rgb(), "image/png", (40, 30)),
        ("png rgba", _png_mode("RGBA"), "image/png", (64, 48)),
        ("png grey with alpha", _png_mode("LA"), "image/png", (64, 48)),
        ("png palette", _png_mode("P"), "image/png", (64, 48)),
        ("png palette with transparency", _png_palette_transparent(), "image/png", (64, 48)),
        ("png 1-bit", _png_mode("1"), "image/png", (64, 48)),
        ("png adam7 interlaced", png_adam7(), "image/png", (33, 21)),
        ("png animated", _apng(), "image/png", (40, 30)),
        ("jpeg cmyk", jpeg_cmyk(), "image/jpeg", (48, 32)),
        (
            "jpeg grey",
            encode_pil(Image.fromarray(gradient_rgb(40, 30)).convert("L"), "JPEG"),
            "image/jpeg",
            (40, 30),
        ),
        ("jpeg progressive", jpeg_bytes(80, 60, progressive=True), "image/jpeg", (80, 60)),
        ("jpeg 4:4:4", jpeg_bytes(50, 30, subsampling=0), "image/jpeg", (50, 30)),
        (
            "jpeg with restart markers",
            jpeg_bytes(64, 64, restart_marker_blocks=1),
            "image/jpeg",
            (64, 64),
        ),
        ("png 1x1", png_bytes(1, 1), "image/png", (1, 1)),
        ("jpeg 1x1", jpeg_bytes(1, 1), "image/jpeg", (1, 1)),
        ("png 3x7", png_bytes(3, 7), "image/png", (3, 7)),
        ("jpeg 17x331", jpeg_bytes(17, 331), "image/jpeg", (17, 331)),
        ("png 10000x2", png_bytes(10000, 2), "image/png", (10000, 2)),
        ("png 2x10000", png_bytes(2, 10000), "image/png", (2, 10000)),
        ("jpeg 4000x3", jpeg_bytes(4000, 3), "image/jpeg", (4000, 3)),
        ("png with trailing garbage", png + random_bytes(512, 6), "image/png", (64, 48)),
        ("jpeg with trailing garbage", jpeg + random_bytes(512, 7), "image/jpeg", (64, 48)),
    ]
    for orientation in range(1, 9):
        swapped = orientation >= 5  # orientations 5..8 turn the image by 90°
        size_wh = (30, 60) if swapped else (60, 30)
        awkward.append(
            (
                f"jpeg exif orientation {orientation}",
                jpeg_exif_rotated(orientation),
                "image/jpeg",
                size_wh,
            )
        )
    for name, body, content_type, size_wh in awkward:
        yield Case(name, body, content_type, OK, size_wh=size_wh)


def format_cases() -> Iterator[Case]:
    """Other image formats and content types: supported ones give 200, others 415."""
    image = Image.fromarray(gradient_rgb(40, 30))
    others = {
        "gif": encode_pil(image.convert("P"), "GIF"),
        "tiff": encode_pil(image, "TIFF"),
        "webp": encode_pil(image, "WEBP"),
        "bmp": encode_pil(image, "BMP"),
    }
    for name, body in others.items():
        yield Case(f"{name} as image/{name}", body, f"image/{name}", UNSUPPORTED)
        yield Case(f"{name} labelled png", body, "image/png", BAD_REQUEST)

    png = png_bytes(40, 30)
    yield Case("no content type", png, None, UNSUPPORTED)
    yield Case("empty content type", png, "", UNSUPPORTED)
    yield Case("text/plain", b"hello", "text/plain", UNSUPPORTED)
    yield Case("octet-stream", png, "application/octet-stream", UNSUPPORTED)
    yield Case("json body", b'{"image": "none"}', "application/json", UNSUPPORTED)
    yield Case("two media types", png, "image/png, image/jpeg", UNSUPPORTED)
    yield Case(
        "content type with parameters", png, "image/png; charset=binary", OK, size_wh=(40, 30)
    )
    yield Case("content type in capitals", png, "IMAGE/PNG", OK, size_wh=(40, 30))
    yield Case("image/jpg alias", jpeg_bytes(40, 30), "image/jpg", OK, size_wh=(40, 30))


def multipart_cases() -> Iterator[Case]:
    """Multipart uploads: broken framing, missing or extra fields, wrong part types."""
    png = png_bytes(40, 30)
    yield Case(
        "multipart png",
        multipart([file_part(png, "image/png")]),
        MULTIPART,
        OK,
        size_wh=(40, 30),
        kind="multipart",
    )
    yield Case(
        "multipart without boundary",
        multipart([file_part(png, "image/png")]),
        "multipart/form-data",
        BAD_REQUEST,
        kind="multipart",
    )
    yield Case(
        "multipart with another boundary",
        multipart([file_part(png, "image/png")], boundary="other"),
        MULTIPART,
        frozenset({400, 422}),
        kind="multipart",
    )
    yield Case(
        "multipart without a file field",
        multipart([file_part(png, "image/png", name="image")]),
        MULTIPART,
        UNPROCESSABLE,
        kind="multipart",
    )
    yield Case(
        "multipart with an empty file",
        multipart([file_part(b"", "image/png")]),
        MULTIPART,
        BAD_REQUEST,
        kind="multipart",
    )
    yield Case(
        "multipart part without content type",
        multipart([file_part(png, None)]),
        MULTIPART,
        UNSUPPORTED,
        kind="multipart",
    )
    yield Case(
        "multipart part as text",
        multipart([file_part(b"not an image", "text/plain")]),
        MULTIPART,
        UNSUPPORTED,
        kind="multipart",
    )
    yield Case(
        "multipart part with garbage",
        multipart([file_part(random_bytes(2048, 8), "image/jpeg")]),
        MULTIPART,
        BAD_REQUEST,
        kind="multipart",
    )
    yield Case(
        "multipart with two files",
        multipart([file_part(png, "image/png"), file_part(jpeg_bytes(), "image/jpeg")]),
        MULTIPART,
        OK,
        size_wh=(40, 30),
        kind="multipart",
    )
    yield Case(
        "multipart with a path in the file name",
        multipart([file_part(png, "image/png", filename="../../../../tmp/escape.png")]),
        MULTIPART,
        OK,
        size_wh=(40, 30),
        kind="multipart",
    )
    base64_part = (
        {
            "Content-Disposition": 'form-data; name="file"; filename="b.png"',
            "Content-Type": "image/png",
            "Content-Transfer-Encoding": "base64",
        },
        _base64_lines(png),
    )
    yield Case(
        "multipart base64 part",
        multipart([base64_part]),
        MULTIPART,
        OK,
        size_wh=(40, 30),
        kind="multipart",
    )
    yield Case(
        "multipart without closing boundary",
        multipart([file_part(png, "image/png")])[: -len("--corpus-boundary--\r\n")],
        MULTIPART,
        frozenset({200, 400}),
        size_wh=(40, 30),
        kind="multipart",
    )
    long_header = ({"Content-Disposition": 'form-data; name="file"', "X-Long": "x" * 200_000}, png)
    yield Case(
        "multipart with a 200 kB part header",
        multipart([long_header]),
        MULTIPART,
        frozenset({200, 400, 415}),
        size_wh=(40, 30),
        kind="multipart",
    )
    yield Case("multipart empty body", b"", MULTIPART, frozenset({400, 422}), kind="multipart")
    yield Case(
        "multipart random bytes",
        random_bytes(4096, 9),
        MULTIPART,
        frozenset({400, 422}),
        kind="multipart",
    )


def query_cases() -> Iterator[Case]:
    """Query parameters outside their ranges are rejected before any image work."""
    png = png_bytes(40, 30)
    invalid = {
        "style": ["bogus", "", "SOLID "],
        "margin": ["-1", "3", "nan", "inf", "1e309", "abc"],
        "on_failure": ["ignore", ""],
    }
    for name, values in invalid.items():
        for value in values:
            yield Case(
                f"query {name}={value!r}", png, "image/png", UNPROCESSABLE, query={name: value}
            )
    yield Case("query margin=0", png, "image/png", OK, query={"margin": "0"}, size_wh=(40, 30))
    yield Case("query style=blur", png, "image/png", OK, query={"style": "blur"}, size_wh=(40, 30))


def detect_cases() -> Iterator[Case]:
    """Send a sample of the image cases to the detection route instead."""
    wanted = {
        "empty body as jpeg",
        "jpeg truncated at 50%",
        "random bytes as png",
        "png pixel bomb 20000x20000",
        "png 16-bit grey",
        "jpeg cmyk",
        "png 10000x2",
        "png 1x1",
    }
    for case in image_cases():
        if case.name in wanted:
            yield Case(
                f"detect: {case.name}",
                case.body,
                case.content_type,
                case.expected_statuses,
                route=DETECT_ROUTE,
                size_wh=case.size_wh,
            )
    yield Case(
        "detect: gif",
        encode_pil(Image.new("P", (8, 8)), "GIF"),
        "image/gif",
        UNSUPPORTED,
        route=DETECT_ROUTE,
    )


def dicom_cases() -> Iterator[Case]:
    """Broken and awkward-but-valid DICOM instances sent as application/dicom."""
    media_type = "application/dicom"
    valid = dicom_bytes(rows=32, columns=48)
    broken = {
        "dicom empty": b"",
        "dicom random bytes": random_bytes(4096, 10),
        "dicom preamble only": b"\x00" * 128 + b"DICM",
        "dicom truncated header": valid[:200],
        "dicom truncated pixel data": valid[: len(valid) - 500],
        "dicom without pixel data": dicom_bytes(pixel_data=False),
        "dicom structured report": dicom_report_bytes(),
        "dicom zero rows": dicom_bytes(rows=0, columns=16),
        "dicom frames missing": dicom_bytes(rows=16, columns=16, frames_claimed=3),
        "dicom short pixel data": dicom_bytes(pixel_bytes=b"\x00" * 100),
        "png labelled dicom": png_bytes(),
    }
    for name, body in broken.items():
        yield Case(name, body, media_type, DICOM_REJECTED, kind="dicom")
    # pydicom may read bytes after the last element as more elements or stop before them.
    yield Case(
        "dicom with trailing garbage",
        valid + random_bytes(64, 12),
        media_type,
        DICOM_REJECTED | OK,
        size_wh=(48, 32),
        kind="dicom",
    )

    # Limits: a header may claim more frames or pixels than the service accepts.
    yield Case(
        "dicom frame count bomb",
        dicom_bytes(rows=8, columns=8, frames_claimed=1_000_000),
        media_type,
        TOO_LARGE,
        kind="dicom",
    )
    yield Case(
        "dicom pixel bomb header",
        dicom_bytes(rows=65535, columns=65535, pixel_bytes=b"\x00" * 64),
        media_type,
        TOO_LARGE,
        kind="dicom",
    )

    awkward = {
        "dicom grey 8-bit": (dicom_bytes(rows=32, columns=48), (48, 32)),
        "dicom grey 16-bit": (dicom_bytes(rows=20, columns=30, bits=16), (30, 20)),
        "dicom monochrome1": (
            dicom_bytes(rows=20, columns=30, photometric="MONOCHROME1"),
            (30, 20),
        ),
        "dicom rgb": (dicom_bytes(rows=24, columns=40, photometric="RGB"), (40, 24)),
        "dicom 3 frames": (dicom_bytes(rows=16, columns=24, frames=3), (24, 16)),
        "dicom implicit vr": (dicom_bytes(rows=16, columns=24, implicit_vr=True), (24, 16)),
        "dicom 1x1": (dicom_bytes(rows=1, columns=1), (1, 1)),
    }
    for name, (body, size_wh) in awkward.items():
        yield Case(name, body, media_type, OK, size_wh=size_wh, kind="dicom")


def offer_cases() -> Iterator[Case]:
    """Stream offers the service must reject with a reason."""
    media_type = "application/json"

    def offer(sdp: str, offer_type: str = "offer") -> bytes:
        return json.dumps({"sdp": sdp, "type": offer_type}).encode()

    yield Case(
        "offer not json", b"v=0\r\n", media_type, OFFER_REJECTED, route=STREAMS_ROUTE, kind="offer"
    )
    yield Case(
        "offer empty body", b"", media_type, OFFER_REJECTED, route=STREAMS_ROUTE, kind="offer"
    )
    yield Case(
        "offer json array", b"[]", media_type, OFFER_REJECTED, route=STREAMS_ROUTE, kind="offer"
    )
    yield Case(
        "offer without sdp",
        b'{"type": "offer"}',
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer of type answer",
        offer(sdp_text("video"), "answer"),
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer with empty sdp",
        offer(""),
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer malformed sdp",
        offer("hello\r\nworld"),
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer audio only",
        offer(sdp_text("audio")),
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer video recvonly",
        offer(sdp_text("video", "recvonly")),
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer two videos",
        offer(sdp_text("video", media_count=2)),
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer without ice or dtls",
        offer(sdp_text("video")),
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    oversized = sdp_text("video") + "a=x-padding:" + "p" * OFFER_SDP_LIMIT_BYTES + "\r\n"
    yield Case(
        "offer oversized sdp",
        offer(oversized),
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer invalid utf-8",
        b'{"sdp": "\xff\xfe", "type": "offer"}',
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )
    yield Case(
        "offer deeply nested json",
        b"[" * 50_000 + b"]" * 50_000,
        media_type,
        OFFER_REJECTED,
        route=STREAMS_ROUTE,
        kind="offer",
    )


def sdp_text(media: str, direction: str = "sendrecv", media_count: int = 1) -> str:
    """Write a syntactically valid SDP offer without ICE credentials or a DTLS fingerprint."""
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    payload = "96" if media == "video" else "111"
    codec = "VP8/90000" if media == "video" else "opus/48000/2"
    for index in range(media_count):
        lines += [
            f"m={media} 9 UDP/TLS/RTP/SAVPF {payload}",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{index}",
            f"a={direction}",
            f"a=rtpmap:{payload} {codec}",
        ]
    return "\r\n".join(lines) + "\r\n"


@cache
def all_cases() -> tuple[Case, ...]:
    """Build the whole corpus once per process, in a stable order."""
    groups: list[Callable[[], Iterator[Case]]] = [
        image_cases,
        format_cases,
        multipart_cases,
        query_cases,
        detect_cases,
        dicom_cases,
        offer_cases,
    ]
    cases = [case for group in groups for case in group()]
    names = [case.name for case in cases]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"corpus case names must be unique, got duplicates {sorted(duplicates)}")
    return tuple(cases)


# DICOM builders


def dicom_bytes(
    *,
    rows: int = 32,
    columns: int = 48,
    frames: int = 1,
    bits: int = 8,
    photometric: str = "MONOCHROME2",
    pixel_data: bool = True,
    frames_claimed: int | None = None,
    pixel_bytes: bytes | None = None,
    implicit_vr: bool = False,
) -> bytes:
    """Build a synthetic ultrasound instance in memory, grey or RGB, 8 or 16 bits.

    `frames_claimed` sets Number of Frames without adding pixel data for those frames, and
    `pixel_bytes` replaces the generated pixel data, so a header can claim more than the
    file holds.
    """
    dataset = _dicom_base("1.2.840.10008.5.1.4.1.1.6.1")  # Ultrasound Image Storage
    if implicit_vr:
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    samples = 3 if photometric == "RGB" else 1
    dataset.Modality = "US"
    dataset.Rows = rows
    dataset.Columns = columns
    dataset.SamplesPerPixel = samples
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    if samples == 3:
        dataset.PlanarConfiguration = 0
    if frames > 1 or frames_claimed is not None:
        dataset.NumberOfFrames = frames_claimed if frames_claimed is not None else frames
    if pixel_bytes is not None:
        dataset.PixelData = pixel_bytes
    elif pixel_data:
        count = max(rows * columns * samples * frames, 1)
        ramp = np.arange(count) * 7 % (2**bits - 5)
        dtype = np.uint8 if bits == 8 else np.dtype("<u2")
        dataset.PixelData = ramp.astype(dtype).tobytes()
    return _dicom_encode(dataset)


def dicom_report_bytes() -> bytes:
    """Build a Basic Text SR instance: valid DICOM with no image in it."""
    dataset = _dicom_base("1.2.840.10008.5.1.4.1.1.88.11")
    dataset.Modality = "SR"
    dataset.ValueType = "CONTAINER"
    dataset.ContinuityOfContent = "SEPARATE"
    return _dicom_encode(dataset)


def _dicom_base(sop_class_uid: str) -> Dataset:
    instance_uid = generate_uid(entropy_srcs=["sonomask hardening corpus", sop_class_uid])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = instance_uid
    dataset.StudyInstanceUID = generate_uid(entropy_srcs=["sonomask hardening study"])
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=["sonomask hardening series"])
    return dataset


def _dicom_encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# Small helpers


def _ramp16(width: int, height: int) -> np.ndarray:
    return (np.arange(width * height, dtype=np.uint32).reshape(height, width) * 31).astype(
        np.uint16
    )


def _png_mode(mode: str) -> bytes:
    rgb = Image.fromarray(gradient_rgb(64, 48))
    if mode == "RGBA":
        rgba = np.dstack([gradient_rgb(64, 48), np.full((48, 64), 180, np.uint8)])
        return encode_pil(Image.fromarray(rgba), "PNG")
    return encode_pil(rgb.convert(mode), "PNG")


def _png_palette_transparent() -> bytes:
    image = Image.fromarray(gradient_rgb(64, 48)).convert("P")
    return encode_pil(image, "PNG", transparency=0)


def _apng() -> bytes:
    frames = [Image.fromarray(gradient_rgb(40, 30)), Image.fromarray(gradient_rgb(40, 30)[::-1])]
    return encode_pil(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def _base64_lines(data: bytes) -> bytes:
    import base64

    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _safe_file_name(name: str) -> str:
    return "".join(char if char.isalnum() else "-" for char in name).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the corpus into")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    for number, case in enumerate(all_cases()):
        file_name = f"{number:03d}-{_safe_file_name(case.name)}.bin"
        (args.out / file_name).write_bytes(case.body)
        index.append(
            {
                "file": file_name,
                "name": case.name,
                "route": case.route,
                "query": case.query,
                "content_type": case.content_type,
                "expected_statuses": sorted(case.expected_statuses),
            }
        )
    (args.out / "index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    print(f"wrote {len(index)} cases to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
