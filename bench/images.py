"""The one set of images every benchmark in a run uses.

Phantom stills (positive and negative planes, 640×480) when the phantom generator is
importable, else the real fetal head stills beside the repository. Each image is sent as
the PNG a client would upload (and as a quality-95 JPEG for one more latency phase), and is
decoded once for the model-only timings.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_STILLS = REPO_ROOT.parent / "shared" / "data" / "real" / "hc18"


@dataclass(frozen=True)
class BenchImage:
    name: str
    bgr: np.ndarray
    png: bytes
    jpeg: bytes


@dataclass(frozen=True)
class ImageSet:
    source: str
    images: list[BenchImage]

    @property
    def size_wh(self) -> tuple[int, int]:
        height, width = self.images[0].bgr.shape[:2]
        return width, height


def load_image_set(count: int = 16) -> ImageSet:
    """Phantom stills when available, else the real stills; raises if neither can be had."""
    try:
        return _phantom_stills(count)
    except ImportError:
        pass
    if REAL_STILLS.is_dir():
        return _real_stills(count)
    raise FileNotFoundError(
        f"no benchmark images: service.research.phantoms is missing and {REAL_STILLS} "
        "does not exist"
    )


def _phantom_stills(count: int) -> ImageSet:
    from service.research.anatomy import NEGATIVE_PLANES, POSITIVE_PLANES
    from service.research.phantoms import render_still

    # Three stills of a target plane, then two of other planes, cycling through the names.
    planes = itertools.cycle([*POSITIVE_PLANES, POSITIVE_PLANES[0], *NEGATIVE_PLANES[:2]])
    images = []
    for seed, plane in zip(range(count), planes, strict=False):
        still = render_still(1000 + seed, plane, size_wh=(640, 480))
        images.append(_bench_image(f"phantom-{seed:02d}-{plane}", still.image_bgr))
    return ImageSet("phantom stills 640x480 (service.research.phantoms)", images)


def _real_stills(count: int) -> ImageSet:
    paths = sorted(REAL_STILLS.glob("*.png"))[:count]
    images = [_bench_image(path.stem, cv2.imread(str(path), cv2.IMREAD_COLOR)) for path in paths]
    return ImageSet(f"real fetal head stills ({REAL_STILLS.name})", images)


def _bench_image(name: str, bgr: np.ndarray) -> BenchImage:
    png_ok, png = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    jpeg_ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not (png_ok and jpeg_ok):
        raise RuntimeError(f"OpenCV failed to encode benchmark image {name}")
    return BenchImage(name, np.ascontiguousarray(bgr), png.tobytes(), jpeg.tobytes())
