"""WebRTC sessions: a peer's video comes in, the masked video and per-frame detections go back.

Each session is one aiortc `RTCPeerConnection`. The peer's offer must carry one `sendrecv`
video track, and may open a data channel (any label), on which the server sends one JSON
message for every frame it sends back.

Frames follow the latest-frame policy. A receiver task keeps only the newest incoming frame
and a processor task checks one frame at a time through the shared pipeline, so when the
detector is slower than the camera the frames in between are dropped and counted. Decoding,
drawing and encoding run in worker threads, and inference runs in the batcher's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

import cv2
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from service.config import Settings
from service.masking import MaskSpec, blank_frame
from service.metrics import Metrics
from service.pipeline import FailureReason, FrameOutcome, FramePipeline
from service.tracking import Decision, HoldConfig, Tracker

logger = logging.getLogger(__name__)

MAX_OFFER_SDP_BYTES = 64 * 1024

# Per-frame messages are skipped while the data channel has more than this queued, so a
# peer that never reads its channel cannot make the server buffer without bound.
MAX_CHANNEL_BUFFERED_BYTES = 1024 * 1024

_SDP_LINE = re.compile(r"^[a-z]=")

PipelineSource = FramePipeline | Callable[[], FramePipeline | None]


class OfferError(ValueError):
    """The offer cannot start a session. `status_code` is the HTTP status code to return."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class SessionLimitError(RuntimeError):
    """All `max_sessions` session slots are taken."""


class StreamsNotReadyError(RuntimeError):
    """The model is not ready, so no session can start."""


class SessionNotFoundError(KeyError):
    """No open session has this id."""


class IllegalTransitionError(RuntimeError):
    """A session was moved to a state it cannot reach from its current one."""


class SessionState(StrEnum):
    """Lifecycle of a stream session."""

    NEW = "new"  # the offer is being negotiated
    CONNECTING = "connecting"  # the answer was sent, ICE has not connected yet
    ACTIVE = "active"  # ICE connected, media may flow
    CLOSING = "closing"  # tasks and the peer connection are being released
    CLOSED = "closed"


_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.NEW: frozenset({SessionState.CONNECTING, SessionState.CLOSING}),
    SessionState.CONNECTING: frozenset({SessionState.ACTIVE, SessionState.CLOSING}),
    SessionState.ACTIVE: frozenset({SessionState.CLOSING}),
    SessionState.CLOSING: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


def check_offer(offer_sdp: str, offer_type: str) -> None:
    """Raise OfferError unless the offer is an SDP offer with one `sendrecv` video section."""
    if offer_type != "offer":
        raise OfferError(422, f"expected type 'offer', got {offer_type!r}")
    size = len(offer_sdp.encode("utf-8"))
    if size > MAX_OFFER_SDP_BYTES:
        raise OfferError(
            413, f"the SDP is {size} bytes, above the limit of {MAX_OFFER_SDP_BYTES} bytes"
        )

    lines = [line for line in offer_sdp.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        raise OfferError(400, "malformed SDP: expected the first line to be 'v=0'")
    for number, line in enumerate(lines, start=1):
        if not _SDP_LINE.match(line):
            raise OfferError(400, f"malformed SDP: line {number} is not of the form 'x=value'")

    sections = _media_sections(lines)
    videos = [section for section in sections if _is_live_video(section)]
    if not videos:
        raise OfferError(422, "the offer has no video: add a camera or video track before offering")
    if len(videos) > 1:
        raise OfferError(422, f"expected one video track in the offer, got {len(videos)}")
    direction = _direction(videos[0])
    if direction != "sendrecv":
        raise OfferError(
            422,
            f"the offer's video is {direction}, expected sendrecv so that the masked video "
            "can be sent back",
        )


def _media_sections(lines: list[str]) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    return sections


def _is_live_video(section: list[str]) -> bool:
    fields = section[0][2:].split()
    return len(fields) >= 2 and fields[0] == "video" and fields[1] != "0"


def _direction(section: list[str]) -> str:
    for line in section[1:]:
        if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            return line[2:]
    return "sendrecv"


def ice_servers_from(settings: Settings) -> list[RTCIceServer]:
    """ICE servers from the settings; an empty list means host candidates only, no STUN."""
    servers = []
    for url in settings.ice_servers:
        if url.startswith(("turn:", "turns:")):
            servers.append(
                RTCIceServer(
                    urls=url, username=settings.ice_username, credential=settings.ice_credential
                )
            )
        else:
            servers.append(RTCIceServer(urls=url))
    return servers


T = TypeVar("T")


class SlotClosedError(Exception):
    """The slot was closed while a task waited on it or put into it."""


class LatestSlot(Generic[T]):
    """A queue of length one in which a new item replaces the one still waiting."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._filled = asyncio.Event()
        self._closed = False

    def put(self, item: T) -> T | None:
        """Store `item` and return the item it replaced, if one was still waiting."""
        if self._closed:
            raise SlotClosedError
        replaced = self._item
        self._item = item
        self._filled.set()
        return replaced

    async def get(self) -> T:
        """Wait for the newest item and take it; raise SlotClosedError once closed."""
        while self._item is None:
            if self._closed:
                raise SlotClosedError
            self._filled.clear()
            await self._filled.wait()
        item = self._item
        self._item = None
        return item

    def close(self) -> None:
        self._closed = True
        self._item = None
        self._filled.set()


@dataclass(frozen=True)
class ReceivedFrame:
    """An incoming frame, numbered from 0 in order of arrival, and its arrival instant."""

    frame: VideoFrame
    number: int
    received_s: float


@dataclass(frozen=True)
class ProcessedFrame:
    """A frame ready to send, with the outcome that decided how it was drawn."""

    frame: VideoFrame
    number: int
    received_s: float
    outcome: FrameOutcome


class MaskedVideoTrack(MediaStreamTrack):
    """The outgoing track: each `recv` returns the next masked or blanked frame of a session."""

    kind = "video"

    def __init__(self, session: StreamSession) -> None:
        super().__init__()
        self._session = session

    async def recv(self) -> VideoFrame:
        try:
            processed = await self._session.outbox.get()
        except SlotClosedError:
            self.stop()
            raise MediaStreamError from None
        self._session.report_sent(processed)
        return processed.frame


class StreamSession:
    """One peer connection, its tracker, and the tasks that move its frames."""

    def __init__(
        self,
        session_id: str,
        *,
        pipeline_source: PipelineSource,
        settings: Settings,
        metrics: Metrics,
        hold_config: HoldConfig,
        on_ended: Callable[[StreamSession, str], None],
    ) -> None:
        self.id = session_id
        self.settings = settings
        self.metrics = metrics
        self.tracker = Tracker(hold_config)
        self.inbox: LatestSlot[ReceivedFrame] = LatestSlot()
        self.outbox: LatestSlot[ProcessedFrame] = LatestSlot()
        self.channel: RTCDataChannel | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers_from(settings)))
        self.created_s = time.monotonic()
        self.last_frame_s = self.created_s
        self.frames_received = 0
        self.frames_dropped = 0
        self.decisions: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[None]] = []
        self._pipeline_source = pipeline_source
        self._on_ended = on_ended
        self._state = SessionState.NEW

    @property
    def state(self) -> SessionState:
        return self._state

    def transition(self, new_state: SessionState) -> None:
        if new_state not in _TRANSITIONS[self._state]:
            raise IllegalTransitionError(
                f"session {self.id}: cannot go from {self._state} to {new_state}"
            )
        self._state = new_state

    def pipeline(self) -> FramePipeline | None:
        source = self._pipeline_source
        return source if isinstance(source, FramePipeline) else source()

    async def negotiate(self, offer_sdp: str) -> RTCSessionDescription:
        """Apply the offer, attach the masked track, and return the answer with its candidates."""
        # NOTE: there is no route for trickled candidates, so a peer must offer only after
        # its ICE gathering has completed, with every candidate in the offer.
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        for transceiver in self.pc.getTransceivers():
            remote = transceiver.receiver.track
            if transceiver.kind == "video":
                self.pc.addTrack(MaskedVideoTrack(self))
                self._start(self._receive_frames(remote), "receive")
                self._start(self._process_frames(), "process")
            elif transceiver.kind == "audio":
                # Audio is not sent back, but its frames must be read or they pile up.
                self._start(_drain(remote), "drain-audio")
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = self.pc.localDescription
        self.transition(SessionState.CONNECTING)
        return answer

    def _start(self, coroutine: Any, name: str) -> None:
        self.tasks.append(asyncio.create_task(coroutine, name=f"stream-{self.id}-{name}"))

    async def _receive_frames(self, remote: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await remote.recv()
            except MediaStreamError:
                self._on_ended(self, "the peer's video track ended")
                return
            if not isinstance(frame, VideoFrame):
                continue
            now_s = time.monotonic()
            self.last_frame_s = now_s
            received = ReceivedFrame(frame, self.frames_received, now_s)
            self.frames_received += 1
            try:
                replaced = self.inbox.put(received)
            except SlotClosedError:
                return
            if replaced is not None:
                self._count_drop()

    async def _process_frames(self) -> None:
        while True:
            try:
                received = await self.inbox.get()
            except SlotClosedError:
                return
            processed = await self._check_frame(received)
            try:
                replaced = self.outbox.put(processed)
            except SlotClosedError:
                return
            if replaced is not None:
                self._count_drop()

    def _count_drop(self) -> None:
        self.frames_dropped += 1
        self.metrics.stream_frames_dropped_total.inc()

    async def _check_frame(self, received: ReceivedFrame) -> ProcessedFrame:
        """Detect, decide and draw one frame; any failure on the way yields a blanked frame."""
        deadline_s = received.received_s + self.settings.deadline_s
        pipeline = self.pipeline()
        try:
            image = await asyncio.to_thread(received.frame.to_ndarray, format="bgr24")
        except (ValueError, RuntimeError) as exc:  # PyAV raises its own ValueError subclasses
            logger.warning(
                "session %s: frame %d could not be decoded: %s", self.id, received.number, exc
            )
            image = np.zeros((received.frame.height, received.frame.width, 3), np.uint8)
            return self._blanked(received, image, FailureReason.INVALID_OUTPUT, "decode failed")
        if pipeline is None:
            return self._blanked(received, image, FailureReason.NOT_READY, "no model loaded")

        outcome = await pipeline.run(image, tracker=self.tracker, deadline_s=deadline_s)
        try:
            frame = await asyncio.to_thread(_draw, outcome, image, received.frame)
        except (ValueError, RuntimeError, cv2.error) as exc:
            logger.error(
                "session %s: frame %d could not be drawn: %s", self.id, received.number, exc
            )
            return self._blanked(received, image, FailureReason.INVALID_OUTPUT, "drawing failed")
        return ProcessedFrame(frame, received.number, received.received_s, outcome)

    def _blanked(
        self, received: ReceivedFrame, image: np.ndarray, reason: FailureReason, detail: str
    ) -> ProcessedFrame:
        self.tracker.mark_blanked()
        outcome = FrameOutcome(
            decision=Decision.BLANKED, spec=MaskSpec(), failure=reason, failure_detail=detail
        )
        frame = _as_video_frame(blank_frame(image), received.frame)
        return ProcessedFrame(frame, received.number, received.received_s, outcome)

    def report_sent(self, processed: ProcessedFrame) -> None:
        """Count a frame on its way out and send its message on the data channel."""
        outcome = processed.outcome
        latency_s = time.monotonic() - processed.received_s
        self.decisions[outcome.decision.value] += 1
        self.metrics.stream_frame_latency_seconds.observe(latency_s)
        pipeline = self.pipeline()
        if pipeline is not None:
            pipeline.record("stream", outcome, processed.received_s)
        else:
            self.metrics.frames_total.labels(source="stream", decision=outcome.decision.value).inc()
        self._send_message(frame_message(processed, latency_s, self.frames_dropped, pipeline))

    def _send_message(self, message: dict[str, Any]) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > MAX_CHANNEL_BUFFERED_BYTES:
            return
        channel.send(json.dumps(message, separators=(",", ":")))


def frame_message(
    processed: ProcessedFrame,
    latency_s: float,
    dropped_frames: int,
    pipeline: FramePipeline | None,
) -> dict[str, Any]:
    """Build the JSON message sent on the data channel for one outgoing frame."""
    outcome = processed.outcome
    return {
        "frame": processed.number,
        "decision": outcome.decision.value,
        "boxes_xyxy": [[round(v, 1) for v in box] for box in outcome.boxes_xyxy],
        "detections": [detection.as_dict() for detection in outcome.detections],
        "mask_age_frames": outcome.mask_age_frames,
        "failure": outcome.failure.value if outcome.failure is not None else None,
        "latency_ms": round(latency_s * 1000.0, 1),
        "dropped_frames": dropped_frames,
        "model_id": pipeline.model_id if pipeline is not None else None,
    }


def _draw(outcome: FrameOutcome, image: np.ndarray, source: VideoFrame) -> VideoFrame:
    return _as_video_frame(outcome.render(image), source)


def _as_video_frame(image: np.ndarray, source: VideoFrame) -> VideoFrame:
    frame = VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
    frame.pts = source.pts
    frame.time_base = source.time_base
    return frame


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


class SessionManager:
    """Opens, watches and closes every stream session of the service."""

    def __init__(
        self,
        pipeline: PipelineSource,
        settings: Settings,
        metrics: Metrics,
        hold_config: HoldConfig,
    ) -> None:
        self._pipeline_source = pipeline
        self.settings = settings
        self.metrics = metrics
        self.hold_config = hold_config
        self._sessions: dict[str, StreamSession] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def active_count(self) -> int:
        return len(self._sessions)

    def session(self, session_id: str) -> StreamSession:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(session_id) from None

    async def open(self, offer_sdp: str, offer_type: str) -> tuple[str, str, str]:
        """Start a session from an offer; return the answer's SDP and type, and the session id.

        Raises OfferError for an offer that cannot start a session, StreamsNotReadyError
        before the model is ready and SessionLimitError when all session slots are taken.
        """
        check_offer(offer_sdp, offer_type)
        pipeline = self._current_pipeline()
        if pipeline is None or not pipeline.ready:
            raise StreamsNotReadyError("the model is not ready yet")
        if len(self._sessions) >= self.settings.max_sessions:
            self.metrics.rejections_total.labels(reason="session_limit").inc()
            raise SessionLimitError(f"all {self.settings.max_sessions} stream sessions are in use")

        session = StreamSession(
            uuid.uuid4().hex,
            pipeline_source=self._pipeline_source,
            settings=self.settings,
            metrics=self.metrics,
            hold_config=self.hold_config,
            on_ended=self._close_later,
        )
        self._sessions[session.id] = session
        self.metrics.streams_active.set(len(self._sessions))
        self._watch(session)
        try:
            answer = await session.negotiate(offer_sdp)
        except Exception as exc:  # aiortc raises many types for offers it cannot handle
            logger.warning("session %s: negotiation failed: %s", session.id, exc)
            await self._close(session, "negotiation failed")
            raise OfferError(400, f"the offer could not be negotiated: {exc}") from exc

        logger.info("session %s: opened (%d open)", session.id, len(self._sessions))
        return answer.sdp, answer.type, session.id

    async def close(self, session_id: str, reason: str = "closed by the client") -> None:
        """Close one session and release its peer connection; SessionNotFoundError if unknown."""
        await self._close(self.session(session_id), reason)

    async def close_all(self) -> None:
        for session in list(self._sessions.values()):
            await self._close(session, "the service is stopping")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _current_pipeline(self) -> FramePipeline | None:
        source = self._pipeline_source
        return source if isinstance(source, FramePipeline) else source()

    def _watch(self, session: StreamSession) -> None:
        """Close the session when its peer connection fails or it receives no frame for a while."""

        @session.pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if session.channel is None:
                session.channel = channel

        @session.pc.on("connectionstatechange")
        def on_connection_state() -> None:
            state = session.pc.connectionState
            if state == "connected" and session.state is SessionState.CONNECTING:
                session.transition(SessionState.ACTIVE)
                logger.info("session %s: connected", session.id)
            elif state in ("failed", "closed"):
                self._close_later(session, f"the peer connection is {state}")

        session.tasks.append(
            asyncio.create_task(self._close_when_idle(session), name=f"stream-{session.id}-idle")
        )

    async def _close_when_idle(self, session: StreamSession) -> None:
        idle_s = self.settings.session_idle_s
        while True:
            silent_s = time.monotonic() - session.last_frame_s
            if silent_s >= idle_s:
                self._close_later(session, f"no frame for {idle_s:g} s")
                return
            await asyncio.sleep(idle_s - silent_s)

    def _close_later(self, session: StreamSession, reason: str) -> None:
        """Close from inside a callback or one of the session's own tasks."""
        if session.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        task = asyncio.create_task(self._close(session, reason), name=f"stream-{session.id}-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, session: StreamSession, reason: str) -> None:
        if session.state in (SessionState.CLOSING, SessionState.CLOSED):
            return
        session.transition(SessionState.CLOSING)
        session.inbox.close()
        session.outbox.close()
        current = asyncio.current_task()
        others = [task for task in session.tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        try:
            await session.pc.close()
        finally:
            session.transition(SessionState.CLOSED)
            self._sessions.pop(session.id, None)
            self.metrics.streams_active.set(len(self._sessions))
        logger.info(
            "session %s: closed (%s) after %d frames in, %d dropped, decisions %s",
            session.id,
            reason,
            session.frames_received,
            session.frames_dropped,
            dict(session.decisions) or "{}",
        )
