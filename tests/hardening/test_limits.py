"""Request limits over HTTP: body size and read time, pixel count, and CORS from an allow-list."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from scripts.hardening.make_corpus import dicom_bytes, png_bytes, random_bytes

PNG = {"Content-Type": "image/png"}
ALLOWED_ORIGIN = "https://viewer.example"
OTHER_ORIGIN = "https://elsewhere.example"


def _port(served) -> int:
    return int(served.base_url.rsplit(":", 1)[1])


async def _read_response(reader: asyncio.StreamReader, timeout_s: float) -> tuple[bytes, bytes]:
    """Read a status line and headers, then whatever follows until the server closes."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    rest = await asyncio.wait_for(reader.read(), timeout_s)
    return head, rest


async def test_slow_upload_gets_408(serve, make_settings) -> None:
    async with serve(make_settings()) as served:
        served.app.state.body_read_timeout_s = 0.5
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(served))
        writer.write(
            b"POST /v1/mask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n" + png_bytes()[:40]
        )
        await writer.drain()
        started_s = time.monotonic()

        # While the slow upload is pending, other clients are served normally.
        other = await served.client.post("/v1/mask", content=png_bytes(), headers=PNG)
        head, rest = await _read_response(reader, timeout_s=10)
        waited_s = time.monotonic() - started_s
        writer.close()
        timeouts = await served.metric("sonomask_rejections_total", {"reason": "body_timeout"})

    assert other.status_code == 200
    assert head.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in head.lower()
    assert b"did not arrive within 0.5 s" in rest
    assert waited_s < 5
    assert timeouts == 1


async def test_dripping_upload_cut_off(serve, make_settings) -> None:
    """A client that keeps sending a byte at a time is cut off all the same.

    The server closes with the client's bytes unread, so the kernel may reset the connection
    before the client reads the 408. Either way the server stops reading.
    """
    async with serve(make_settings()) as served:
        served.app.state.body_read_timeout_s = 0.6
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(served))
        writer.write(
            b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 5000\r\n\r\n"
        )
        started_s = time.monotonic()
        response = asyncio.create_task(_read_response(reader, timeout_s=10))
        sent = 0
        with contextlib.suppress(ConnectionError):
            while not response.done() and sent < 100:
                writer.write(b"\x00")
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.05)
        try:
            head, _ = await response
        except ConnectionError:
            head = b"(connection reset)"
        ended_s = time.monotonic() - started_s
        writer.close()
        timeouts = await served.metric("sonomask_rejections_total", {"reason": "body_timeout"})

    assert head.startswith(b"HTTP/1.1 408") or head == b"(connection reset)"
    assert ended_s < 3, "the server kept reading a dripping body"
    assert timeouts == 1


async def test_chunked_body_over_limit(serve, make_settings) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(20):
            yield b"\x00" * 1024

    async with serve(make_settings(max_body_bytes=8192)) as served:
        response = await served.client.post("/v1/mask", content=chunks(), headers=PNG)
        still_up = await served.client.get("/healthz")
    assert response.status_code == 413
    assert "8192" in response.json()["detail"]
    assert still_up.status_code == 200


async def test_multipart_over_limit(serve, make_settings) -> None:
    body = random_bytes(8000, seed=11)
    async with serve(make_settings(max_body_bytes=4096)) as served:
        response = await served.client.post(
            "/v1/mask", files={"file": ("frame.png", body, "image/png")}
        )
    assert response.status_code == 413


async def test_invalid_content_length(serve, make_settings) -> None:
    async with serve(make_settings()) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(served))
        writer.write(
            b"POST /v1/mask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: -5\r\n\r\n"
        )
        await writer.drain()
        head, _ = await _read_response(reader, timeout_s=10)
        writer.close()
        still_up = await served.client.get("/healthz")
    assert head.startswith(b"HTTP/1.1 400")
    assert still_up.status_code == 200


async def test_pixel_limit_boundary(serve, make_settings) -> None:
    async with serve(make_settings(max_pixels=10_000)) as served:
        at_limit = await served.client.post("/v1/mask", content=png_bytes(100, 100), headers=PNG)
        above = await served.client.post("/v1/mask", content=png_bytes(101, 100), headers=PNG)
        detect_above = await served.client.post(
            "/v1/detect", content=png_bytes(10_001, 1), headers=PNG
        )
    assert at_limit.status_code == 200
    assert above.status_code == 413
    assert "10100 pixels" in above.json()["detail"]
    assert detect_above.status_code == 413


async def test_offer_body_limit(serve, make_settings) -> None:
    async with serve(make_settings()) as served:
        if "/v1/streams" not in served.app.openapi()["paths"]:
            return
        padding = "a=x:" + "p" * (300 * 1024)
        response = await served.client.post(
            "/v1/streams", json={"sdp": f"v=0\r\n{padding}\r\n", "type": "offer"}
        )
    assert response.status_code == 413


async def test_no_cors_by_default(serve, make_settings) -> None:
    async with serve(make_settings()) as served:
        simple = await served.client.get("/healthz", headers={"Origin": ALLOWED_ORIGIN})
        preflight = await served.client.options(
            "/v1/mask",
            headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
        )
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405


async def test_cors_allow_list(serve, make_settings) -> None:
    settings = make_settings(cors_origins=[ALLOWED_ORIGIN])
    preflight_headers = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with serve(settings) as served:
        allowed = await served.client.post(
            "/v1/mask", content=png_bytes(), headers={**PNG, "Origin": ALLOWED_ORIGIN}
        )
        other = await served.client.post(
            "/v1/mask", content=png_bytes(), headers={**PNG, "Origin": OTHER_ORIGIN}
        )
        allowed_preflight = await served.client.options(
            "/v1/mask", headers={**preflight_headers, "Origin": ALLOWED_ORIGIN}
        )
        other_preflight = await served.client.options(
            "/v1/mask", headers={**preflight_headers, "Origin": OTHER_ORIGIN}
        )

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "X-Sonomask-Decision" in allowed.headers["access-control-expose-headers"]
    assert "access-control-allow-credentials" not in allowed.headers
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    assert allowed_preflight.status_code == 200
    assert allowed_preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in allowed_preflight.headers["access-control-allow-headers"].lower()
    assert other_preflight.status_code == 400
    assert "access-control-allow-origin" not in other_preflight.headers


async def test_dicom_frame_limit(serve, make_settings) -> None:
    dicom = {"Content-Type": "application/dicom"}
    async with serve(make_settings(max_dicom_frames=2)) as served:
        at_limit = await served.client.post(
            "/v1/mask", content=dicom_bytes(rows=8, columns=12, frames=2), headers=dicom
        )
        above = await served.client.post(
            "/v1/mask", content=dicom_bytes(rows=8, columns=12, frames=3), headers=dicom
        )
    assert at_limit.status_code == 200
    assert above.status_code == 413
    assert "SONOMASK_MAX_DICOM_FRAMES" in above.json()["detail"]


async def test_dicom_pixel_limit(serve, make_settings) -> None:
    dicom = {"Content-Type": "application/dicom"}
    async with serve(make_settings(max_pixels=10_000)) as served:
        at_limit = await served.client.post(
            "/v1/mask", content=dicom_bytes(rows=100, columns=100), headers=dicom
        )
        above = await served.client.post(
            "/v1/mask", content=dicom_bytes(rows=100, columns=101), headers=dicom
        )
    assert at_limit.status_code == 200
    assert above.status_code == 413
