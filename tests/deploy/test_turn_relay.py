"""WebRTC through the project's coturn configuration, with relay-only ICE, all on loopback.

coturn runs with deploy/coturn/turnserver.conf plus test overrides: it listens and relays on
127.0.0.1 and, except in the test of the shipped peer rules, allows 127.0.0.1 as a peer,
which the shipped config denies. Every client peer uses iceTransportPolicy "relay", so it
gathers only relay candidates and its media can reach the other side only through coturn.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from deploy.checks.compose import TURN_CONFIG
from service.config import Settings

RELAY_PORTS = 20
START_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 20.0
VIDEO_CLOCK = fractions.Fraction(1, 90_000)


@dataclass(frozen=True)
class TurnServer:
    """A running coturn and the credentials it accepts."""

    url: str
    username: str
    password: str
    min_port: int
    max_port: int
    log: Path

    def ice_server(self, *, password: str | None = None) -> RTCIceServer:
        return RTCIceServer(
            urls=self.url, username=self.username, credential=password or self.password
        )


def _relay_port_range() -> tuple[int, int]:
    """Return a run of RELAY_PORTS UDP ports on 127.0.0.1 that are free right now."""
    for base in range(42000, 60000, RELAY_PORTS * 5):
        sockets = []
        try:
            for port in range(base, base + RELAY_PORTS):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
            return base, base + RELAY_PORTS - 1
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError("no free run of UDP ports for the TURN relay range")


@contextlib.contextmanager
def _run_turnserver(
    binary: str, tmp_path: Path, port: int, *, allow_loopback_peers: bool
) -> Iterator[TurnServer]:
    """Run coturn with the project's config on loopback, with a random password."""
    min_port, max_port = _relay_port_range()
    username, password = "sonomask-test", secrets.token_hex(16)
    log = tmp_path / "turnserver.log"
    command = [
        binary,
        "-c",
        str(TURN_CONFIG),
        f"--user={username}:{password}",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={min_port}",
        f"--max-port={max_port}",
        "--no-tls",
        "--no-dtls",
        "--verbose",
        f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--userdb={tmp_path / 'turndb'}",
    ]
    if allow_loopback_peers:
        # Test only: the peers live on 127.0.0.1, which the shipped config denies.
        command += ["--allowed-peer-ip=127.0.0.1", "--allow-loopback-peers"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_for_listener(process, port, log)
        yield TurnServer(
            url=f"turn:127.0.0.1:{port}?transport=udp",
            username=username,
            password=password,
            min_port=min_port,
            max_port=max_port,
            log=log,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def turn_server(
    tmp_path_factory: pytest.TempPathFactory,
    pick_port: Callable[[], int],
    require_tool: Callable[[str], str],
) -> Iterator[TurnServer]:
    """coturn that may relay to peers on 127.0.0.1."""
    binary = require_tool("turnserver")
    tmp_path = tmp_path_factory.mktemp("coturn")
    with _run_turnserver(binary, tmp_path, pick_port(), allow_loopback_peers=True) as server:
        yield server


@pytest.fixture(scope="module")
def locked_turn_server(
    tmp_path_factory: pytest.TempPathFactory,
    pick_port: Callable[[], int],
    require_tool: Callable[[str], str],
) -> Iterator[TurnServer]:
    """coturn with the shipped peer rules alone, which deny loopback peers."""
    binary = require_tool("turnserver")
    tmp_path = tmp_path_factory.mktemp("coturn-locked")
    with _run_turnserver(binary, tmp_path, pick_port(), allow_loopback_peers=False) as server:
        yield server


def _wait_for_listener(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    # coturn listens on TCP and UDP on the same port; a TCP connect shows it is up.
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"turnserver exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"turnserver did not listen within {START_TIMEOUT_S} s:\n{log.read_text()}")


def relay_only(turn: TurnServer, *, password: str | None = None) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[turn.ice_server(password=password)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


def candidates_of(sdp: str) -> list[tuple[str, int, str]]:
    """Return (address, port, type) of every a=candidate line of an SDP."""
    pattern = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) (\d+) typ (\S+)", re.MULTILINE)
    return [(address, int(port), kind) for address, port, kind in pattern.findall(sdp)]


def assert_relayed_through(turn: TurnServer, sdp: str) -> None:
    candidates = candidates_of(sdp)
    assert candidates, "the description has no ICE candidates"
    for address, port, kind in candidates:
        assert kind == "relay", f"non-relay candidate {address}:{port} typ {kind}"
        assert address == "127.0.0.1"
        assert turn.min_port <= port <= turn.max_port, f"relay port {port} is not coturn's"


@pytest.fixture
async def peers() -> AsyncIterator[list[RTCPeerConnection]]:
    """Peer connections a test creates; all are closed when it ends."""
    created: list[RTCPeerConnection] = []
    yield created
    await asyncio.gather(*(pc.close() for pc in created))


async def test_data_channel_relays_through_turn(
    turn_server: TurnServer, peers: list[RTCPeerConnection]
) -> None:
    caller = RTCPeerConnection(relay_only(turn_server))
    callee = RTCPeerConnection(relay_only(turn_server))
    peers += [caller, callee]
    received: asyncio.Queue[str] = asyncio.Queue()

    @callee.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        @channel.on("message")
        def on_message(message: str) -> None:
            channel.send(f"echo {message}")

    channel = caller.createDataChannel("check")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    channel.on("message", received.put_nowait)

    await caller.setLocalDescription(await caller.createOffer())
    await callee.setRemoteDescription(caller.localDescription)
    await callee.setLocalDescription(await callee.createAnswer())
    await caller.setRemoteDescription(callee.localDescription)
    assert_relayed_through(turn_server, caller.localDescription.sdp)
    assert_relayed_through(turn_server, callee.localDescription.sdp)

    await asyncio.wait_for(opened.wait(), CONNECT_TIMEOUT_S)
    channel.send("ping")

    assert await asyncio.wait_for(received.get(), CONNECT_TIMEOUT_S) == "echo ping"
    assert caller.iceConnectionState == "completed"


async def test_turn_rejects_wrong_password(
    turn_server: TurnServer, peers: list[RTCPeerConnection]
) -> None:
    peer = RTCPeerConnection(relay_only(turn_server, password="not-the-password"))
    peers.append(peer)
    peer.createDataChannel("check")

    await peer.setLocalDescription(await peer.createOffer())

    assert candidates_of(peer.localDescription.sdp) == []


async def _connect_data_channel(
    caller: RTCPeerConnection, callee: RTCPeerConnection, timeout_s: float
) -> bool:
    """Negotiate a data channel between two peers; return whether it opened in time."""
    channel = caller.createDataChannel("check")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await caller.setLocalDescription(await caller.createOffer())
    await callee.setRemoteDescription(caller.localDescription)
    await callee.setLocalDescription(await callee.createAnswer())
    await caller.setRemoteDescription(callee.localDescription)
    try:
        await asyncio.wait_for(opened.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


async def test_shipped_rules_deny_loopback_peers(
    locked_turn_server: TurnServer, peers: list[RTCPeerConnection]
) -> None:
    caller = RTCPeerConnection(relay_only(locked_turn_server))
    callee = RTCPeerConnection(relay_only(locked_turn_server))
    peers += [caller, callee]

    opened = await _connect_data_channel(caller, callee, timeout_s=5.0)

    assert not opened
    assert "403: Forbidden IP" in locked_turn_server.log.read_text(errors="replace")


class GradientTrack(MediaStreamTrack):
    """A video track of grey 320x240 frames with a moving bright band, at `fps`."""

    kind = "video"

    def __init__(self, fps: float) -> None:
        super().__init__()
        self.fps = fps
        self.sent = 0
        self._started_s: float | None = None

    async def recv(self) -> VideoFrame:
        if self._started_s is None:
            self._started_s = time.monotonic()
        due_s = self._started_s + self.sent / self.fps
        await asyncio.sleep(max(0.0, due_s - time.monotonic()))
        image = np.full((240, 320, 3), 90, dtype=np.uint8)
        band_x = (self.sent * 8) % 280
        image[80:160, band_x : band_x + 40] = 220
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = round(self.sent / self.fps / VIDEO_CLOCK)
        frame.time_base = VIDEO_CLOCK
        self.sent += 1
        return frame


@pytest.fixture
def loopback_host_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the in-process service offer 127.0.0.1 as its only host candidate.

    aioice leaves loopback addresses out by default, and the TURN server in this test may
    relay to loopback peers only.
    """
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def _read_frames(track: MediaStreamTrack, frames: asyncio.Queue[VideoFrame]) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            assert isinstance(frame, VideoFrame)
            frames.put_nowait(frame)


async def test_stream_endpoint_relays_through_turn(
    turn_server: TurnServer,
    peers: list[RTCPeerConnection],
    serve: Any,
    untrained_model_path: Path,
    loopback_host_candidates: None,
) -> None:
    settings = Settings(
        model_path=untrained_model_path, selftest_require_detection=False, max_wait_ms=1.0
    )
    async with serve(settings) as served:
        client = RTCPeerConnection(relay_only(turn_server))
        peers.append(client)
        client.addTrack(GradientTrack(fps=15.0))
        messages: asyncio.Queue[str] = asyncio.Queue()
        client.createDataChannel("detections").on("message", messages.put_nowait)
        returned: asyncio.Queue[VideoFrame] = asyncio.Queue()
        readers: list[asyncio.Task[None]] = []

        @client.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            readers.append(asyncio.create_task(_read_frames(track, returned)))

        await client.setLocalDescription(await client.createOffer())
        assert_relayed_through(turn_server, client.localDescription.sdp)
        offer = {"sdp": client.localDescription.sdp, "type": client.localDescription.type}
        response = await served.client.post("/v1/streams", json=offer)
        assert response.status_code == 200, response.text
        answer = response.json()
        await client.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])
        )

        message = json.loads(await asyncio.wait_for(messages.get(), CONNECT_TIMEOUT_S))
        frame = await asyncio.wait_for(returned.get(), CONNECT_TIMEOUT_S)
        stream_frames = sum(
            [
                await served.metric(
                    "sonomask_frames_total", {"source": "stream", "decision": decision}
                )
                for decision in ("masked", "held", "clear", "blanked")
            ]
        )
        closed = await served.client.delete(f"/v1/streams/{answer['session_id']}")
        for reader in readers:
            reader.cancel()

    assert message["decision"] in {"masked", "held", "clear", "blanked"}
    assert (frame.width, frame.height) == (320, 240)
    assert stream_frames >= 1
    assert closed.status_code == 204
    assert "ALLOCATE processed, success" in turn_server.log.read_text(errors="replace")
