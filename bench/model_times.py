"""Per-image model time of one backend, in a process of its own.

`python -m bench.model_times --backend onnx --model M.pt --out result.json` times
`Detector.predict` (letterbox, inference and NMS, the work the batcher's worker does) at
batch 1 and batch 8 on the benchmark images, and records the process's resident memory
and whether torch was imported. Each backend runs in its own process so that one
runtime's thread pool cannot slow the next one down.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

# The lean ONNX Runtime detector, the lean OpenVINO detector, ultralytics on the .pt, and
# ultralytics' own predictor on the same .onnx (the path the service took before the lean one),
# and OpenVINO in bfloat16, its default on CPUs with bfloat16 instructions.
BACKENDS = ("onnx", "openvino", "torch", "onnx-ultralytics", "openvino-bf16", "tensorrt")


def build_detector(backend: str, model: Path, device: str) -> Any:
    from service.config import Backend, Settings
    from service.detection.loading import STUDY_CONF, STUDY_IOU, ModelCard, load_detector
    from service.detection.model import UltralyticsDetector
    from service.detection.runtimes import read_export_metadata

    if backend == "openvino-bf16":
        from service.detection.runtimes import OpenVinoDetector

        card = ModelCard.read(model)
        return OpenVinoDetector(
            model.with_suffix(".onnx"),
            imgsz=card.imgsz or 0,
            conf=card.conf or STUDY_CONF,
            iou=card.iou or STUDY_IOU,
            inference_precision="bf16",
        )
    if backend == "onnx-ultralytics":
        onnx_path = model.with_suffix(".onnx")
        card = ModelCard.read(model)
        imgsz = card.imgsz or read_export_metadata(onnx_path).imgsz or 0
        thresholds = {"conf": card.conf or STUDY_CONF, "iou": card.iou or STUDY_IOU}
        return UltralyticsDetector(onnx_path, device=device, imgsz=imgsz, **thresholds)
    settings = Settings(model_path=model, backend=Backend(backend), device=device)
    return load_detector(settings)


def time_batches(
    detector: Any, frames: list[Any], batch_size: int, repeats: int
) -> dict[str, float]:
    """Milliseconds per image over `repeats` batches of `batch_size`, cycling the frames."""
    for start in range(0, 3 * batch_size, batch_size):
        detector.predict(_cycle(frames, start, batch_size))
    per_image_ms = []
    for index in range(repeats):
        batch = _cycle(frames, index * batch_size, batch_size)
        started = time.perf_counter()
        detector.predict(batch)
        per_image_ms.append((time.perf_counter() - started) * 1000 / batch_size)
    per_image_ms.sort()
    return {
        "batch_size": batch_size,
        "repeats": repeats,
        "p50_ms": statistics.median(per_image_ms),
        "p95_ms": per_image_ms[min(len(per_image_ms) - 1, int(0.95 * len(per_image_ms)))],
        "mean_ms": statistics.fmean(per_image_ms),
    }


def _rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _repeats_for(batch_size: int, batch_1_repeats: int) -> int:
    """Batches to time: `batch_1_repeats` at batch 1, twice as many images per larger size."""
    return batch_1_repeats if batch_size == 1 else max(8, 2 * batch_1_repeats // batch_size)


def _cycle(frames: list[Any], start: int, count: int) -> list[Any]:
    return [frames[(start + offset) % len(frames)] for offset in range(count)]


def measure(
    backend: str,
    model: Path,
    device: str,
    image_count: int,
    repeats: int,
    batch_sizes: tuple[int, ...] = (1, 8),
) -> dict[str, Any]:
    from bench.images import load_image_set

    loaded_s = time.perf_counter()
    detector = build_detector(backend, model, device)
    detector.warmup()
    load_s = time.perf_counter() - loaded_s
    rss_after_load_mib = _rss_mib()
    image_set = load_image_set(image_count)
    frames = [image.bgr for image in image_set.images]
    found = sum(len(d) for d in detector.predict(frames))
    timings = {
        f"batch_{size}": time_batches(detector, frames, size, _repeats_for(size, repeats))
        for size in batch_sizes
    }
    return {
        "backend": backend,
        "model": detector.info.as_dict(),
        "images": image_set.source,
        "image_size_wh": list(image_set.size_wh),
        "load_and_warmup_s": round(load_s, 3),
        "detections_on_image_set": found,
        **timings,
        "rss_after_load_mib": rss_after_load_mib,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_imported": "torch" in sys.modules,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--model", type=Path, required=True, help=".pt weights (siblings used)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--images", type=int, default=16, help="benchmark images to cycle")
    parser.add_argument("--repeats", type=int, default=60, help="batch-1 runs to time")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 8],
        help="batch sizes to time besides 1 and 8",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    batch_sizes = tuple(sorted(set(args.batch_sizes) | {1, 8}))
    result = measure(args.backend, args.model, args.device, args.images, args.repeats, batch_sizes)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
