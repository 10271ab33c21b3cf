"""Benchmark DICOM masking: a multi-frame cine end to end, against its frames sent as JPEGs.

The service runs in this process under uvicorn on 127.0.0.1. Each timed round sends:
- the whole cine as one `POST /v1/mask` with Content-Type application/dicom;
- the same frames as JPEGs (quality 95), one `POST /v1/mask` after another;
- the same JPEGs with up to `max_batch_size` requests in flight, so the batcher can group them.

Frames per second is frames / wall time of the round, measured at the client, so it
includes HTTP, decoding, detection, masking and encoding. The cine is pydicom's 30-frame
ultrasound example (JPEG baseline, YBR_FULL_422, 320×240) unless --file names another.

Usage: python bench/bench_dicom.py [--file X.dcm] [--rounds 5] [--model M.pt] [--device cpu]
Writes JSON to bench/results/ (see --out). It is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

import cv2
import httpx
import numpy as np
import pydicom
import uvicorn
from pydicom.data import get_testdata_file
from pydicom.pixels import iter_pixels

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402

JPEG_QUALITY = 95


def jpeg_frames(data: bytes) -> list[bytes]:
    """Decode each frame of the instance to RGB with pydicom and encode it as a JPEG."""
    jpegs = []
    for frame in iter_pixels(io.BytesIO(data)):
        if frame.ndim == 2:
            frame = np.stack([frame] * 3, axis=-1)
        if frame.dtype != np.uint8:
            frame = cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a frame as JPEG")
        jpegs.append(encoded.tobytes())
    return jpegs


async def post_dicom(client: httpx.AsyncClient, data: bytes) -> float:
    started_s = time.perf_counter()
    response = await client.post(
        "/v1/mask", content=data, headers={"Content-Type": "application/dicom"}
    )
    response.raise_for_status()
    return time.perf_counter() - started_s


async def post_jpegs(client: httpx.AsyncClient, jpegs: list[bytes], in_flight: int) -> float:
    limit = asyncio.Semaphore(in_flight)

    async def one(body: bytes) -> None:
        async with limit:
            response = await client.post(
                "/v1/mask", content=body, headers={"Content-Type": "image/jpeg"}
            )
            response.raise_for_status()

    started_s = time.perf_counter()
    await asyncio.gather(*(one(body) for body in jpegs))
    return time.perf_counter() - started_s


def summarize_rounds(frames: int, seconds: list[float]) -> dict[str, Any]:
    fps = [frames / s for s in seconds]
    return {
        "rounds": len(seconds),
        "seconds_median": round(statistics.median(seconds), 3),
        "fps_median": round(statistics.median(fps), 1),
        "fps_min": round(min(fps), 1),
        "fps_max": round(max(fps), 1),
        "ms_per_frame_median": round(1000 * statistics.median(seconds) / frames, 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    data = args.file.read_bytes()
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    jpegs = jpeg_frames(data)
    frames = len(jpegs)

    overrides: dict[str, Any] = {"device": args.device, "max_dicom_frames": max(2000, frames)}
    if args.model is not None:
        overrides["model_path"] = args.model
    settings = Settings(**overrides)
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]

    timings: dict[str, list[float]] = {"dicom": [], "jpeg_sequential": [], "jpeg_concurrent": []}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.2)
            # One untimed round warms every path: decoders, encoders and the model.
            await post_dicom(client, data)
            await post_jpegs(client, jpegs, settings.max_batch_size)

            # Rounds interleave the three ways, so a change in machine load hits all alike.
            for _ in range(args.rounds):
                timings["dicom"].append(await post_dicom(client, data))
                timings["jpeg_sequential"].append(await post_jpegs(client, jpegs, 1))
                timings["jpeg_concurrent"].append(
                    await post_jpegs(client, jpegs, settings.max_batch_size)
                )
    finally:
        server.should_exit = True
        await serving

    return {
        "benchmark": "bench/bench_dicom.py",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "model": app.state.model_info,
        "settings": {
            "device": settings.device,
            "max_batch_size": settings.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "hold_policy": settings.hold_policy.value,
        },
        "source": {
            "file": args.file.name,
            "frames": frames,
            "size_wh": [int(header.Columns), int(header.Rows)],
            "transfer_syntax": header.file_meta.TransferSyntaxUID.name,
            "photometric_interpretation": str(header.PhotometricInterpretation),
            "bytes": len(data),
            "jpeg_bytes_total": sum(len(j) for j in jpegs),
        },
        "dicom": summarize_rounds(frames, timings["dicom"]),
        "jpeg_sequential": summarize_rounds(frames, timings["jpeg_sequential"]),
        "jpeg_concurrent": summarize_rounds(frames, timings["jpeg_concurrent"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--file",
        type=Path,
        default=Path(get_testdata_file("examples_ybr_color.dcm") or ""),
        help="multi-frame DICOM instance (default: pydicom's 30-frame ultrasound cine)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each way")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped model)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "results" / "dicom.json",
        help="JSON file for the results",
    )
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
