"""Stream sessions end to end: the real app on loopback and a real aiortc client peer."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from service.config import Settings
from service.research.phantoms import render_video_frames

# A sweep on which the shipped model finds the target in most frames, so the check is about
# the stream path. `sonomask evaluate-video` measures the model and the hold policies.
PHANTOM_SEED = 31


def noise_frames(
    n_frames: int, size_wh: tuple[int, int] = (320, 240), seed: int = 0
) -> list[np.ndarray]:
    """Frames of smoothed grey noise with a bright square drifting right."""
    rng = np.random.default_rng(seed)
    width, height = size_wh
    coarse = rng.integers(40, 140, size=(height // 8, width // 8), dtype=np.uint8)
    background = np.kron(coarse, np.ones((8, 8), dtype=np.uint8))
    frames = []
    for index in range(n_frames):
        image = np.repeat(background[:, :, None], 3, axis=2).copy()
        x1 = 60 + 3 * index
        image[90:150, x1 : x1 + 60] = 230
        frames.append(image)
    return frames


def is_blanked(image_bgr: np.ndarray) -> bool:
    """Black apart from the notice text: nothing of the sent frame is left."""
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    return bool((grey < 40).mean() > 0.9)


def plumbing_settings(model_path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_path": model_path,
        "selftest_require_detection": False,
        "max_wait_ms": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def open_session(served, peer) -> None:
    response = await served.client.post("/v1/streams", json=await peer.offer())
    assert response.status_code == 200, response.text
    await peer.accept(response.json())


async def wait_for_metric(served, name: str, expected: float, timeout_s: float = 10.0) -> float:
    deadline = asyncio.get_running_loop().time() + timeout_s
    value = await served.metric(name)
    while value != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        value = await served.metric(name)
    return value


async def test_stream_returns_every_frame_checked(serve, client_peer, untrained_model_path) -> None:
    frames = noise_frames(30)
    async with serve(plumbing_settings(untrained_model_path)) as served:
        peer = client_peer(frames, fps=15.0)
        await open_session(served, peer)
        arrived = await peer.wait_for(lambda p: len(p.messages) >= 20, timeout_s=20)
        active = await served.metric("sonomask_streams_active")
        clear_total = await served.metric(
            "sonomask_frames_total", {"source": "stream", "decision": "clear"}
        )
        deleted = await served.client.delete(f"/v1/streams/{peer.session_id}")
        active_after = await wait_for_metric(served, "sonomask_streams_active", 0.0)
        deleted_again = await served.client.delete(f"/v1/streams/{peer.session_id}")
        await peer.close()

    assert arrived
    assert active == 1
    assert clear_total >= 20
    assert deleted.status_code == 204
    assert active_after == 0
    assert deleted_again.status_code == 404

    first = peer.messages[0]
    assert first["decision"] == "clear"
    assert first["boxes_xyxy"] == []
    assert first["model_id"].startswith("untrained-n@")
    assert first["failure"] is None
    assert [m["frame"] for m in peer.messages] == sorted(m["frame"] for m in peer.messages)

    indices = [frame.index for frame in peer.returned]
    assert None not in indices
    assert indices == sorted(indices)
    for returned in peer.returned[:10]:
        difference = np.abs(returned.image_bgr.astype(int) - peer.track.frames[returned.index])
        # A clear frame comes back as it went out, up to VP8 coding error.
        assert difference.mean() < 12


@pytest.mark.parametrize(("fault", "failure"), [("raise", "detector_error"), ("hang", "deadline")])
async def test_faulted_detector_blanks_stream(
    serve, client_peer, faulty_detector, fault: str, failure: str
) -> None:
    settings = Settings(deadline_ms=300.0, max_wait_ms=1.0)
    async with serve(settings, detector=faulty_detector) as served:
        faulty_detector.fault = fault
        peer = client_peer(noise_frames(20), fps=15.0, repeat=True)
        await open_session(served, peer)
        arrived = await peer.wait_for(
            lambda p: len(p.returned) >= 8 and len(p.messages) >= 5, timeout_s=20
        )
        blanked_total = await served.metric(
            "sonomask_frames_total", {"source": "stream", "decision": "blanked"}
        )
        faulty_detector.release()
        await peer.close()

    assert arrived
    assert blanked_total >= 8
    assert {m["decision"] for m in peer.messages} == {"blanked"}
    assert {m["failure"] for m in peer.messages} == {failure}
    for returned in peer.returned:
        assert returned.index is None
        assert is_blanked(returned.image_bgr)


async def test_slow_detector_drops_stale_frames(serve, client_peer, faulty_detector) -> None:
    settings = Settings(deadline_ms=2000.0, max_wait_ms=1.0)
    async with serve(settings, detector=faulty_detector) as served:
        faulty_detector.fault = "slow"
        faulty_detector.delay_s = 0.25
        peer = client_peer(noise_frames(60), fps=20.0)
        await open_session(served, peer)
        await peer.wait_for(lambda p: p.track.sent >= 60, timeout_s=20)
        await asyncio.sleep(0.5)
        dropped = await served.metric("sonomask_stream_frames_dropped_total")
        await peer.close()

    # About four frames are checked a second, so most of the 60 sent must be dropped.
    assert dropped >= 30
    assert len(peer.returned) < 30
    assert peer.messages
    # The newest frame is always the one checked next, so the delay stays near one
    # model call plus one frame interval instead of growing with the backlog.
    assert max(m["latency_ms"] for m in peer.messages) < 900
    assert peer.messages[-1]["dropped_frames"] >= 30


async def test_idle_session_closes(serve, client_peer, untrained_model_path) -> None:
    settings = plumbing_settings(untrained_model_path, session_idle_s=0.5)
    async with serve(settings) as served:
        peer = client_peer(noise_frames(5))
        # The answer is never applied, so no frame ever reaches the server.
        response = await served.client.post("/v1/streams", json=await peer.offer())
        session_id = response.json()["session_id"]
        active = await served.metric("sonomask_streams_active")
        active_after = await wait_for_metric(served, "sonomask_streams_active", 0.0, 5.0)
        deleted = await served.client.delete(f"/v1/streams/{session_id}")
        await peer.close()

    assert response.status_code == 200
    assert active == 1
    assert active_after == 0
    assert deleted.status_code == 404


async def test_peer_close_ends_session(serve, client_peer, untrained_model_path) -> None:
    async with serve(plumbing_settings(untrained_model_path)) as served:
        peer = client_peer(noise_frames(10), repeat=True)
        await open_session(served, peer)
        await peer.wait_for(lambda p: len(p.returned) >= 3, timeout_s=20)
        active = await served.metric("sonomask_streams_active")
        await peer.close()
        active_after = await wait_for_metric(served, "sonomask_streams_active", 0.0)

    assert active == 1
    assert active_after == 0


async def test_session_limit_rejects_with_reason(serve, client_peer, untrained_model_path) -> None:
    settings = plumbing_settings(untrained_model_path, max_sessions=1)
    async with serve(settings) as served:
        first_peer = client_peer(noise_frames(5))
        second_peer = client_peer(noise_frames(5))
        first = await served.client.post("/v1/streams", json=await first_peer.offer())
        second = await served.client.post("/v1/streams", json=await second_peer.offer())
        rejected = await served.metric("sonomask_rejections_total", {"reason": "session_limit"})
        await first_peer.close()
        await second_peer.close()

    assert first.status_code == 200
    assert second.status_code == 503
    assert "all 1 stream sessions are in use" in second.json()["detail"]
    assert second.headers["Retry-After"]
    assert rejected == 1


async def test_streams_require_api_key(serve, client_peer, untrained_model_path) -> None:
    settings = plumbing_settings(untrained_model_path, api_keys=["stream-key"])
    async with serve(settings) as served:
        peer = client_peer(noise_frames(5))
        offer = await peer.offer()
        without_key = await served.client.post("/v1/streams", json=offer)
        with_key = await served.client.post(
            "/v1/streams", json=offer, headers={"Authorization": "Bearer stream-key"}
        )
        await peer.close()

    assert without_key.status_code == 401
    assert with_key.status_code == 200


async def _offer_without_video() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("detections")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def _offer_receive_only() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_bad_offers_rejected(serve, client_peer, untrained_model_path) -> None:
    async with serve(plumbing_settings(untrained_model_path)) as served:
        peer = client_peer(noise_frames(2))
        valid = await peer.offer()
        await peer.close()
        padded = valid["sdp"] + "a=x-padding:" + "p" * (70 * 1024) + "\r\n"
        cases = [
            ({"sdp": "hello", "type": "offer"}, 400, "malformed SDP"),
            ({"sdp": "v=0\r\nnot an sdp line\r\n", "type": "offer"}, 400, "line 2"),
            ({"sdp": await _offer_without_video(), "type": "offer"}, 422, "has no video"),
            ({"sdp": await _offer_receive_only(), "type": "offer"}, 422, "recvonly"),
            ({"sdp": padded, "type": "offer"}, 413, "above the limit"),
            ({"sdp": valid["sdp"], "type": "answer"}, 422, "'sdp' and 'type'"),
            ({"type": "offer"}, 422, "sdp: Field required"),
        ]
        responses = [await served.client.post("/v1/streams", json=body) for body, _, _ in cases]
        not_json = await served.client.post(
            "/v1/streams", content=b"{", headers={"Content-Type": "application/json"}
        )
        active = await served.metric("sonomask_streams_active")

    for (_, status, detail), response in zip(cases, responses, strict=True):
        assert response.status_code == status, response.text
        assert detail in response.json()["detail"]
    assert not_json.status_code == 400
    assert active == 0


def inside_is_black(image_bgr: np.ndarray, box_xyxy, margin: float) -> bool:
    """True when the box, grown by the mask margin and shrunk 2 px for VP8 ringing, is black."""
    x1, y1, x2, y2 = box_xyxy
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, round(x1 - dx) + 2), max(0, round(y1 - dy) + 2)
    right = min(image_bgr.shape[1], round(x2 + dx) - 2)
    bottom = min(image_bgr.shape[0], round(y2 + dy) - 2)
    if right <= left or bottom <= top:
        return True
    return bool(image_bgr[top:bottom, left:right].max(axis=2).mean() < 12)


@pytest.mark.slow
async def test_stream_masks_phantom_targets(
    serve, client_peer, default_model_path, covered_fraction
) -> None:
    phantom = list(render_video_frames(seed=PHANTOM_SEED, n_frames=60, size_wh=(320, 240)))
    settings = Settings(model_path=default_model_path, max_wait_ms=1.0)
    async with serve(settings) as served:
        peer = client_peer([frame.image_bgr for frame in phantom], fps=10.0)
        await open_session(served, peer)
        await peer.wait_for(lambda p: p.track.sent >= len(phantom), timeout_s=30)
        await peer.wait_for(lambda p: len(p.messages) >= len(p.returned) > 0, timeout_s=5)
        await peer.close()

    messages = {message["frame"]: message for message in peer.messages}
    decisions = [message["decision"] for message in peer.messages]
    assert "masked" in decisions
    assert "blanked" not in decisions

    readable = [returned for returned in peer.returned if returned.index is not None]
    # A mask drawn over the index marker makes it unreadable: rare, but possible.
    assert len(readable) >= 0.8 * len(peer.returned)
    target_frames = 0
    covered_frames = 0
    for returned in readable:
        # On loopback no frame is lost, so the server's frame number is the client's.
        message = messages[returned.index]
        if message["decision"] in ("masked", "held"):
            assert message["boxes_xyxy"]
            for box in message["boxes_xyxy"]:
                assert inside_is_black(returned.image_bgr, box, settings.mask_margin)
        truth = phantom[returned.index]
        if not truth.boxes:
            continue
        target_frames += 1
        original = peer.track.frames[returned.index]
        shares = [covered_fraction(returned.image_bgr, original, box) for _, box in truth.boxes]
        covered_frames += min(shares) >= 0.95
    assert target_frames >= 10
    assert covered_frames >= 10
