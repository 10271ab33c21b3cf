"""Time each stage of the REST hot path on its own, outside the server.

Decode, the thread hop that moves work off the event loop, letterbox, NMS, mask and
encode, each on the benchmark images, in milliseconds (median). Inference itself is in
the model timings.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from bench.images import ImageSet


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    action()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _thread_hop_ms(repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await asyncio.to_thread(int)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _head_output(shape_hw: tuple[int, int], candidates: int) -> np.ndarray:
    """A detect head output for two classes with `candidates` anchors above confidence 0.13."""
    height_px, width_px = shape_hw
    anchors = sum((height_px // stride) * (width_px // stride) for stride in (8, 16, 32))
    rng = np.random.default_rng(0)
    output = np.zeros((1, 6, anchors), np.float32)
    output[0, 0] = rng.uniform(0, width_px, anchors)
    output[0, 1] = rng.uniform(0, height_px, anchors)
    output[0, 2:4] = rng.uniform(10, 80, (2, anchors))
    output[0, 4:] = rng.uniform(0, 0.1, (2, anchors))
    output[0, 4, rng.choice(anchors, min(candidates, anchors), replace=False)] = 0.5
    return output


def time_stages(image_set: ImageSet, repeats: int = 40) -> dict[str, Any]:
    """Median milliseconds of each hot-path stage on the first benchmark image."""
    from service.codecs import ImageFormat, decode_image, encode_image
    from service.detection.yolo import decode_batch, input_shape_hw, letterbox_batch
    from service.masking import MaskSpec, mask_boxes

    image = image_set.images[0]
    decoded = decode_image(image.png, ImageFormat.PNG, max_pixels=100_000_000)
    shape_hw = input_shape_hw([decoded.bgr], 320, 32, rectangular=True)
    _, placements = letterbox_batch([decoded.bgr], shape_hw)
    head_output = _head_output(shape_hw, candidates=60)
    flooded_output = _head_output(shape_hw, candidates=head_output.shape[2])
    box = (200.0, 150.0, 320.0, 260.0)
    spec = MaskSpec()
    tiny_png = cv2.imencode(".png", cv2.resize(decoded.bgr, (64, 48)))[1].tobytes()

    stages = {
        "decode_png": lambda: decode_image(image.png, ImageFormat.PNG, max_pixels=100_000_000),
        "decode_png_64x48": lambda: decode_image(tiny_png, ImageFormat.PNG, max_pixels=10_000),
        "letterbox_320": lambda: letterbox_batch([decoded.bgr], shape_hw),
        "nms_decode_60_candidates": lambda: decode_batch(
            head_output, placements, conf=0.13, iou=0.6, max_detections=32
        ),
        "nms_decode_all_candidates": lambda: decode_batch(
            flooded_output, placements, conf=0.13, iou=0.6, max_detections=32
        ),
        "mask_one_box": lambda: mask_boxes(decoded.pixels, [box], spec),
        "encode_png": lambda: encode_image(decoded.pixels, decoded.mode, ImageFormat.PNG),
        "encode_png_all_filters": lambda: cv2.imencode(
            ".png", decoded.bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]
        ),
        "encode_jpeg": lambda: encode_image(decoded.pixels, decoded.mode, ImageFormat.JPEG),
    }
    timings = {name: _median_ms(action, repeats) for name, action in stages.items()}
    timings["thread_hop"] = asyncio.run(_thread_hop_ms(repeats * 5))
    size_wh = image_set.size_wh
    print("hot-path stages (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    return {"image_size_wh": list(size_wh), "median_ms": timings}
