"""A minimal aiortc client for stream churn: open a session, see masked frames, close it.

Both peers must use 127.0.0.1 as their only ICE host candidate (see `use_loopback_ice`),
because aioice leaves loopback addresses out by default and would route the media over
the machine's network interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

VIDEO_CLOCK = fractions.Fraction(1, 90_000)


def use_loopback_ice() -> None:
    """Make every peer in this process offer only 127.0.0.1 as a host candidate."""
    import aioice.ice

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"]

    aioice.ice.get_host_addresses = loopback_only


class NoiseTrack(MediaStreamTrack):
    """A video track of grey noise frames at `fps`, generated on the fly."""

    kind = "video"

    def __init__(self, fps: float = 15.0, size_wh: tuple[int, int] = (160, 120)) -> None:
        super().__init__()
        self.fps = fps
        self.size_wh = size_wh
        self.sent = 0
        self._rng = np.random.default_rng(0)
        self._started_s: float | None = None

    async def recv(self) -> VideoFrame:
        if self._started_s is None:
            self._started_s = time.monotonic()
        due_s = self._started_s + self.sent / self.fps
        await asyncio.sleep(max(0.0, due_s - time.monotonic()))
        width, height = self.size_wh
        image = self._rng.integers(30, 226, (height, width, 3), dtype=np.uint8)
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = round(self.sent / self.fps / VIDEO_CLOCK)
        frame.time_base = VIDEO_CLOCK
        self.sent += 1
        return frame


@dataclass
class SessionOutcome:
    """The result of one session: its open status, connection, frames returned, close status."""

    status: int = 0
    connected: bool = False
    frames_returned: int = 0
    closed_status: int = 0
    error: str = ""
    seconds: float = 0.0


@dataclass
class ChurnResult:
    sessions: int
    opened: int = 0
    connected: int = 0
    with_frames: int = 0
    closed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def run_session(
    client: httpx.AsyncClient, *, frames_wanted: int = 3, timeout_s: float = 15.0
) -> SessionOutcome:
    """Open one session, wait for `frames_wanted` masked frames back, then DELETE it."""
    outcome = SessionOutcome()
    started_s = time.monotonic()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    returned = asyncio.Event()
    reader: asyncio.Task[None] | None = None

    async def read_frames(remote: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await remote.recv()
                outcome.frames_returned += 1
                if outcome.frames_returned >= frames_wanted:
                    returned.set()

    @pc.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        nonlocal reader
        if remote.kind == "video":
            reader = asyncio.create_task(read_frames(remote))

    try:
        pc.createDataChannel("detections")
        pc.addTrack(NoiseTrack())
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        response = await client.post("/v1/streams", json=offer)
        outcome.status = response.status_code
        if response.status_code != 200:
            outcome.error = f"open returned {response.status_code}: {response.text[:200]}"
            return outcome
        answer = response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(returned.wait(), timeout_s)
        outcome.connected = pc.connectionState == "connected"
        closed = await client.delete(f"/v1/streams/{answer['session_id']}")
        outcome.closed_status = closed.status_code
    finally:
        await pc.close()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        outcome.seconds = time.monotonic() - started_s
    return outcome


async def churn_sessions(client: httpx.AsyncClient, count: int, parallel: int = 1) -> ChurnResult:
    """Open and close `count` sessions, `parallel` at a time."""
    result = ChurnResult(sessions=count)
    started_s = time.monotonic()
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            outcome = await run_session(client)
            result.opened += outcome.status == 200
            result.connected += outcome.connected
            result.with_frames += outcome.frames_returned > 0
            result.closed += outcome.closed_status == 204
            if outcome.error:
                result.errors.append(outcome.error)

    await asyncio.gather(*(worker() for _ in range(parallel)))
    result.seconds = time.monotonic() - started_s
    return result


@dataclass
class StreamCapture:
    """The frames (BGR) and data channel messages one session returned."""

    frames_bgr: list[np.ndarray] = field(default_factory=list)
    messages: list[dict[str, object]] = field(default_factory=list)
    frames_sent: int = 0
    session_id: str = ""


async def capture_stream(
    client: httpx.AsyncClient,
    duration_s: float,
    *,
    fps: float = 15.0,
    during: Callable[[float], None] | None = None,
) -> StreamCapture:
    """Stream noise for `duration_s`, keep every frame and message that comes back, close.

    `during(elapsed_s)` is called about ten times a second, for example to switch faults.
    """
    capture = StreamCapture()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = NoiseTrack(fps=fps)
    tasks: list[asyncio.Task[None]] = []

    async def read_frames(remote: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await remote.recv()
                capture.frames_bgr.append(frame.to_ndarray(format="bgr24"))  # type: ignore[union-attr]

    @pc.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        if remote.kind == "video":
            tasks.append(asyncio.create_task(read_frames(remote)))

    channel = pc.createDataChannel("detections")

    @channel.on("message")
    def on_message(message: str | bytes) -> None:
        capture.messages.append(json.loads(message))

    try:
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        response = await client.post("/v1/streams", json=offer)
        response.raise_for_status()
        answer = response.json()
        capture.session_id = answer["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        started_s = time.monotonic()
        while (elapsed_s := time.monotonic() - started_s) < duration_s:
            if during is not None:
                during(elapsed_s)
            await asyncio.sleep(0.1)
        # Let the last frames in flight arrive before closing.
        await asyncio.sleep(0.5)
        await client.delete(f"/v1/streams/{capture.session_id}")
    finally:
        capture.frames_sent = track.sent
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return capture
