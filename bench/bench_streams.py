"""Benchmark live streams: N WebRTC streams of phantom sweeps through one service on loopback.

Each stream is a pair of real aiortc peers: a client that sends a numbered phantom sweep at a
fixed frame rate, and the service's session. The service runs in this process under uvicorn
on 127.0.0.1, and ICE is pinned to 127.0.0.1 so no packet leaves the machine.

Measured per run:
- added latency: receipt to send inside the service, from the data channel messages;
- round trip: the client's send instant to the masked frame's arrival, by the frame's number;
- drop rate: frames sent that never came back (the latest-frame policy drops stale ones);
- exposure: returned frames whose true target box is less than 95 % covered by black,
  by the decision the service took;
- frames without message: returned frames beyond the per-frame messages (must be 0, since
  the service sends a message for every frame it checked or blanked).

Usage: python bench/bench_streams.py [--streams 4] [--fps 15] [--size 640x480] [--seconds 20]
Writes JSON to bench/results/ (see --out). It is not a test, and runs for --seconds plus the
model's start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

import aioice.ice
import cv2
import httpx
import numpy as np
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.research.phantoms import render_video_frames  # noqa: E402

VIDEO_CLOCK = fractions.Fraction(1, 90_000)
CELL_PX = 16
INDEX_BITS = 12
COVERED_SHARE = 0.95


def stamp_index(image: np.ndarray, index: int) -> np.ndarray:
    """Write `index` as 16×16 cells in the top-left: a start cell and the bits, then the inverse.

    A mask drawn over the marker makes it unreadable instead of changing the index.
    """
    out = image.copy()
    bits = [1] + [(index >> bit) & 1 for bit in range(INDEX_BITS)]
    for position, bit in enumerate(bits):
        columns = slice(position * CELL_PX, (position + 1) * CELL_PX)
        out[0:CELL_PX, columns] = 255 if bit else 0
        out[CELL_PX : 2 * CELL_PX, columns] = 0 if bit else 255
    return out


def read_index(image: np.ndarray) -> int | None:
    quarter = CELL_PX // 4

    def lit(row: int, position: int) -> bool:
        top = row * CELL_PX + quarter
        left = position * CELL_PX + quarter
        patch = image[top : top + CELL_PX // 2, left : left + CELL_PX // 2]
        return float(patch.mean()) > 127.0

    bits = []
    for position in range(INDEX_BITS + 1):
        upper, lower = lit(0, position), lit(1, position)
        if upper == lower:
            return None
        bits.append(upper)
    if not bits[0]:
        return None
    return sum(1 << bit for bit in range(INDEX_BITS) if bits[bit + 1])


def covered_share(returned: np.ndarray, original: np.ndarray, box: tuple[float, ...]) -> float:
    """Share of the box's visible pixels (grey > 40 in the original) that came back black."""
    x1, y1, x2, y2 = (round(v) for v in box)
    before = cv2.cvtColor(original[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    after = cv2.cvtColor(returned[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    visible = before > 40
    return 1.0 if not visible.any() else float((after[visible] < 25).mean())


def is_blanked(image: np.ndarray) -> bool:
    return bool((cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) < 40).mean() > 0.9)


class SweepTrack(MediaStreamTrack):
    """Sends frames at a fixed rate, looping, each stamped with its send number."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.sent_s: list[float] = []
        self._started_s: float | None = None

    async def recv(self) -> VideoFrame:
        if self._started_s is None:
            self._started_s = time.monotonic()
        number = len(self.sent_s)
        due_s = self._started_s + number / self.fps
        await asyncio.sleep(max(0.0, due_s - time.monotonic()))
        image = stamp_index(self.frames[number % len(self.frames)], number)
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = round(number / self.fps / VIDEO_CLOCK)
        frame.time_base = VIDEO_CLOCK
        self.sent_s.append(time.monotonic())
        return frame


@dataclass
class StreamResult:
    """Counts and timings that one client peer collected."""

    sent: int = 0
    returned: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)
    target_frames: int = 0
    exposed_by_decision: dict[str, int] = field(default_factory=dict)
    unreadable_marker: int = 0


async def run_stream(
    client: httpx.AsyncClient,
    originals: list[np.ndarray],
    truth: list[list[tuple[float, ...]]],
    fps: float,
    seconds: float,
) -> StreamResult:
    """Stream one sweep for `seconds` and check every frame that comes back."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = SweepTrack(originals, fps)
    result = StreamResult()
    arrivals: list[tuple[float, np.ndarray]] = []
    channel = pc.createDataChannel("detections")
    channel.on("message", lambda message: result.messages.append(json.loads(message)))

    async def read(remote: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await remote.recv()
                arrivals.append((time.monotonic(), frame.to_ndarray(format="bgr24")))  # type: ignore[union-attr]
        except MediaStreamError:
            return

    readers: list[asyncio.Task[None]] = []
    pc.on("track", lambda remote: readers.append(asyncio.create_task(read(remote))))
    pc.addTrack(track)
    await pc.setLocalDescription(await pc.createOffer())
    response = await client.post(
        "/v1/streams", json={"sdp": pc.localDescription.sdp, "type": "offer"}
    )
    response.raise_for_status()
    answer = response.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    await asyncio.sleep(seconds)
    result.sent = len(track.sent_s)
    await client.delete(f"/v1/streams/{answer['session_id']}")
    await pc.close()
    for reader in readers:
        reader.cancel()

    result.returned = len(arrivals)
    decisions_in_order = [message["decision"] for message in result.messages]
    for position, (arrived_s, image) in enumerate(arrivals):
        number = read_index(image)
        if number is None or number >= len(track.sent_s):
            # Blanked frames carry no marker; a mask over the marker also hides it.
            if not is_blanked(image):
                result.unreadable_marker += 1
            continue
        result.round_trip_ms.append((arrived_s - track.sent_s[number]) * 1000.0)
        frame_index = number % len(originals)
        if not truth[frame_index]:
            continue
        result.target_frames += 1
        share = min(covered_share(image, originals[frame_index], box) for box in truth[frame_index])
        if share < COVERED_SHARE:
            # Messages and frames leave in the same order, so the position pairs them.
            # NOTE: a frame lost in transit shifts the pairing, so this split is approximate.
            decision = (
                decisions_in_order[position] if position < len(decisions_in_order) else "unknown"
            )
            result.exposed_by_decision[decision] = result.exposed_by_decision.get(decision, 0) + 1
    return result


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # type: ignore[assignment]
    width, height = args.size
    sweeps = []
    for stream in range(args.streams):
        frames = list(render_video_frames(200 + stream, args.sweep_frames, (width, height)))
        sweeps.append(
            ([f.image_bgr for f in frames], [[box for _, box in f.boxes] for f in frames])
        )

    overrides: dict[str, Any] = {"max_sessions": max(16, args.streams)}
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
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.2)
            started_s = time.monotonic()
            results = await asyncio.gather(
                *(
                    run_stream(client, originals, truth, args.fps, args.seconds)
                    for originals, truth in sweeps
                )
            )
            wall_s = time.monotonic() - started_s
            metrics_text = (await client.get("/metrics")).text
    finally:
        server.should_exit = True
        await serving

    return summarize(args, settings, results, wall_s, metrics_text, app.state.model_info)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rpartition(" ")[2])
    return 0.0


def summarize(
    args: argparse.Namespace,
    settings: Settings,
    results: list[StreamResult],
    wall_s: float,
    metrics_text: str,
    model_info: dict[str, Any] | None,
) -> dict[str, Any]:
    added_ms = [m["latency_ms"] for r in results for m in r.messages]
    round_trip_ms = [v for r in results for v in r.round_trip_ms]
    sent = sum(r.sent for r in results)
    returned = sum(r.returned for r in results)
    decisions: dict[str, int] = {}
    exposed: dict[str, int] = {}
    for r in results:
        for m in r.messages:
            decisions[m["decision"]] = decisions.get(m["decision"], 0) + 1
        for decision, count in r.exposed_by_decision.items():
            exposed[decision] = exposed.get(decision, 0) + count
    target_frames = sum(r.target_frames for r in results)
    return {
        "benchmark": "bench/bench_streams.py",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "model": model_info,
        "settings": {
            "device": settings.device,
            "max_batch_size": settings.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "deadline_ms": settings.deadline_ms,
            "hold_policy": settings.hold_policy.value,
        },
        "streams": args.streams,
        "fps": args.fps,
        "size_wh": list(args.size),
        "seconds": round(wall_s, 1),
        "frames_sent": sent,
        "frames_returned": returned,
        "drop_rate": round(1.0 - returned / sent, 4) if sent else None,
        "server_dropped_frames": _metric(metrics_text, "sonomask_stream_frames_dropped_total"),
        "returned_fps_per_stream": round(returned / args.streams / wall_s, 1),
        "decisions": decisions,
        "added_latency_ms": {
            "p50": percentile(added_ms, 0.5),
            "p95": percentile(added_ms, 0.95),
            "max": round(max(added_ms), 1) if added_ms else None,
        },
        "round_trip_ms": {
            "p50": percentile(round_trip_ms, 0.5),
            "p95": percentile(round_trip_ms, 0.95),
        },
        "target_frames_returned": target_frames,
        "exposed_target_frames_by_decision": exposed,
        "exposure_rate": round(sum(exposed.values()) / target_frames, 4) if target_frames else None,
        "frames_with_unreadable_marker": sum(r.unreadable_marker for r in results),
        "frames_without_message": max(0, returned - sum(len(r.messages) for r in results)),
        "streams_active_at_end": _metric(metrics_text, "sonomask_streams_active"),
    }


def _size_wh(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams")
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second per stream")
    parser.add_argument("--size", type=_size_wh, default=(640, 480), help="frame size WxH in px")
    parser.add_argument("--seconds", type=float, default=20.0, help="streaming time")
    parser.add_argument("--sweep-frames", type=int, default=150, help="frames per phantom sweep")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped model)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "results" / "streams.json",
        help="JSON result file",
    )
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
