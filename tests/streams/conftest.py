"""A real aiortc client peer for stream tests, and loopback-only ICE for every peer in the process.

The client sends numbered frames. Each frame carries its index as black and white 16×16
cells in its top-left corner. The cells survive VP8 coding, so a frame that comes back can be
matched with the frame that went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

MARKER_CELL_PX = 16
MARKER_BITS = 10
VIDEO_CLOCK = fractions.Fraction(1, 90_000)


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every peer in this process offer 127.0.0.1 as its only ICE host candidate.

    aioice leaves out loopback addresses by default, which would route test traffic through
    the machine's network interface.
    """
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def stamp_index(image_bgr: np.ndarray, index: int) -> np.ndarray:
    """Return a copy of the frame with `index` written as cells in the top-left corner.

    The first row holds a white start cell and the bits, the second row their inverse, so a
    mask drawn over the marker makes it unreadable instead of changing the index.
    """
    out = image_bgr.copy()
    cell = MARKER_CELL_PX
    bits = [1] + [(index >> bit) & 1 for bit in range(MARKER_BITS)]
    for position, bit in enumerate(bits):
        columns = slice(position * cell, (position + 1) * cell)
        out[0:cell, columns] = 255 if bit else 0
        out[cell : 2 * cell, columns] = 0 if bit else 255
    return out


def read_index(image_bgr: np.ndarray) -> int | None:
    """Decode the index written by `stamp_index`; None when the marker is missing or damaged."""
    cell = MARKER_CELL_PX
    quarter = cell // 4

    def lit(row: int, position: int) -> bool:
        top = row * cell + quarter
        left = position * cell + quarter
        patch = image_bgr[top : top + cell // 2, left : left + cell // 2]
        return float(patch.mean()) > 127.0

    bits = []
    for position in range(MARKER_BITS + 1):
        upper, lower = lit(0, position), lit(1, position)
        if upper == lower:
            return None
        bits.append(upper)
    if not bits[0]:
        return None
    return sum(1 << bit for bit in range(MARKER_BITS) if bits[bit + 1])


class NumberedTrack(MediaStreamTrack):
    """A video track that sends the given frames, stamped with their index, at `fps`."""

    kind = "video"

    def __init__(self, frames: Sequence[np.ndarray], fps: float, *, repeat: bool = False) -> None:
        super().__init__()
        self.frames = [stamp_index(frame, index) for index, frame in enumerate(frames)]
        self.fps = fps
        self.repeat = repeat
        self.sent = 0
        self._started_s: float | None = None

    async def recv(self) -> VideoFrame:
        if self._started_s is None:
            self._started_s = time.monotonic()
        if self.sent >= len(self.frames) and not self.repeat:
            self.stop()
            raise MediaStreamError
        due_s = self._started_s + self.sent / self.fps
        await asyncio.sleep(max(0.0, due_s - time.monotonic()))
        image = self.frames[self.sent % len(self.frames)]
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = round(self.sent / self.fps / VIDEO_CLOCK)
        frame.time_base = VIDEO_CLOCK
        self.sent += 1
        return frame


@dataclass
class ReturnedFrame:
    """A frame the server sent back: the index read from its marker, and its pixels."""

    index: int | None
    image_bgr: np.ndarray
    arrived_s: float


@dataclass
class ClientPeer:
    """A browser-like peer: one sendrecv video track and a data channel for frame messages."""

    pc: RTCPeerConnection
    track: NumberedTrack
    returned: list[ReturnedFrame] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    session_id: str | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def offer(self) -> dict[str, str]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    async def accept(self, answer: dict[str, str]) -> None:
        self.session_id = answer["session_id"]
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])
        )

    async def wait_for(self, condition: Callable[[ClientPeer], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self):
                return True
            await asyncio.sleep(0.05)
        return condition(self)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _read_returned(peer: ClientPeer, track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            image = frame.to_ndarray(format="bgr24")  # type: ignore[union-attr]
            peer.returned.append(ReturnedFrame(read_index(image), image, time.monotonic()))
    peer.ended.set()


PeerFactory = Callable[..., ClientPeer]


@pytest.fixture
def client_peer() -> PeerFactory:
    """Build client peers with no ICE servers at all, so nothing leaves the machine."""

    def build(
        frames: Sequence[np.ndarray], fps: float = 15.0, *, repeat: bool = False
    ) -> ClientPeer:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        track = NumberedTrack(frames, fps, repeat=repeat)
        peer = ClientPeer(pc, track)
        channel = pc.createDataChannel("detections")

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            peer.messages.append(json.loads(message))

        @pc.on("track")
        def on_track(remote: MediaStreamTrack) -> None:
            if remote.kind == "video":
                peer._tasks.append(asyncio.create_task(_read_returned(peer, remote)))

        pc.addTrack(track)
        return peer

    return build


def covered_fraction(
    returned_bgr: np.ndarray, original_bgr: np.ndarray, box_xyxy: Sequence[float]
) -> float:
    """Share of the box's visible pixels (grey > 40 in the original) that came back black.

    Ultrasound shows fluid as black, so pixels that were already dark cannot show whether
    the mask is there, and are left out. Returns 1.0 when the box has no visible pixel at all.
    """
    x1, y1, x2, y2 = (round(v) for v in box_xyxy)
    original = cv2.cvtColor(original_bgr[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    returned = cv2.cvtColor(returned_bgr[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    visible = original > 40
    if not visible.any():
        return 1.0
    return float((returned[visible] < 25).mean())


@pytest.fixture(name="stamp_index")
def stamp_index_fixture() -> Callable[[np.ndarray, int], np.ndarray]:
    return stamp_index


@pytest.fixture(name="read_index")
def read_index_fixture() -> Callable[[np.ndarray], int | None]:
    return read_index


@pytest.fixture(name="covered_fraction")
def covered_fraction_fixture() -> Callable[[np.ndarray, np.ndarray, Sequence[float]], float]:
    return covered_fraction
