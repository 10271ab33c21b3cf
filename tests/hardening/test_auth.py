"""API keys over HTTP: which routes need one, both header forms, key sources, the CLI guard."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.hardening.make_corpus import png_bytes
from service.config import Settings

KEY = "hardening-key-0123456789abcdef"
OTHER_KEY = "second-key-fedcba9876543210"
PNG = {"Content-Type": "image/png"}


def _paths(served) -> set[str]:
    return set(served.app.openapi()["paths"])


async def test_missing_key_gives_401(serve, make_settings) -> None:
    settings = make_settings(api_keys=[KEY])
    async with serve(settings) as served:
        masked = await served.client.post("/v1/mask", content=png_bytes(), headers=PNG)
        detected = await served.client.post("/v1/detect", content=png_bytes(), headers=PNG)
        unauthorized = await served.metric("sonomask_rejections_total", {"reason": "unauthorized"})
    for response in (masked, detected):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "X-API-Key" in response.json()["detail"]
    assert unauthorized == 2


async def test_wrong_key_gives_403(serve, make_settings) -> None:
    settings = make_settings(api_keys=[KEY])
    wrong_headers = [
        {"Authorization": f"Bearer {KEY}x"},
        {"X-API-Key": KEY[:-1]},
        {"Authorization": f"Bearer {KEY.upper()}"},
        {"X-API-Key": "not-a-key"},
    ]
    async with serve(settings) as served:
        responses = [
            await served.client.post("/v1/mask", content=png_bytes(), headers={**PNG, **headers})
            for headers in wrong_headers
        ]
        forbidden = await served.metric("sonomask_rejections_total", {"reason": "forbidden"})
    for headers, response in zip(wrong_headers, responses, strict=True):
        assert response.status_code == 403, headers
        assert response.json()["detail"] == "invalid API key"
        assert KEY not in response.text
    assert forbidden == len(wrong_headers)


async def test_both_header_forms_accepted(serve, make_settings) -> None:
    settings = make_settings(api_keys=[KEY, OTHER_KEY])
    accepted_headers = [
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {OTHER_KEY}"},
        {"Authorization": f"Bearer   {KEY}"},
        {"X-API-Key": KEY},
        {"X-API-Key": OTHER_KEY},
    ]
    async with serve(settings) as served:
        for headers in accepted_headers:
            response = await served.client.post(
                "/v1/mask", content=png_bytes(), headers={**PNG, **headers}
            )
            assert response.status_code == 200, headers
            assert response.headers["content-type"] == "image/png"


async def test_non_bearer_scheme_is_missing_key(serve, make_settings) -> None:
    settings = make_settings(api_keys=[KEY])
    async with serve(settings) as served:
        basic = await served.client.post(
            "/v1/mask", content=png_bytes(), headers={**PNG, "Authorization": f"Basic {KEY}"}
        )
        empty_bearer = await served.client.post(
            "/v1/mask", content=png_bytes(), headers={**PNG, "Authorization": "Bearer"}
        )
    assert basic.status_code == 401
    assert empty_bearer.status_code == 401


async def test_keys_from_environment(
    serve, untrained_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SONOMASK_API_KEYS", f" {KEY} , {OTHER_KEY},")
    monkeypatch.setenv("SONOMASK_MODEL_PATH", str(untrained_model_path))
    monkeypatch.setenv("SONOMASK_SELFTEST_REQUIRE_DETECTION", "false")
    async with serve(Settings()) as served:
        first = await served.client.post(
            "/v1/detect", content=png_bytes(), headers={**PNG, "X-API-Key": KEY}
        )
        second = await served.client.post(
            "/v1/detect", content=png_bytes(), headers={**PNG, "X-API-Key": OTHER_KEY}
        )
        missing = await served.client.post("/v1/detect", content=png_bytes(), headers=PNG)
    assert first.status_code == 200
    assert second.status_code == 200
    assert missing.status_code == 401


async def test_keys_from_secret_file(serve, make_settings, tmp_path: Path) -> None:
    secret = tmp_path / "api-keys"
    secret.write_text(f"# rotated monthly\n\n{KEY}\n  {OTHER_KEY}  \n", encoding="utf-8")
    settings = make_settings(api_keys_file=secret)
    async with serve(settings) as served:
        statuses = {}
        for key in (KEY, OTHER_KEY, "# rotated monthly", "rotated monthly"):
            response = await served.client.post(
                "/v1/mask", content=png_bytes(), headers={**PNG, "Authorization": f"Bearer {key}"}
            )
            statuses[key] = response.status_code
    assert statuses[KEY] == 200
    assert statuses[OTHER_KEY] == 200
    assert statuses["# rotated monthly"] == 403, "a comment line was taken as a key"
    assert statuses["rotated monthly"] == 403


async def test_missing_secret_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SONOMASK_API_KEYS_FILE"):
        Settings(api_keys_file=tmp_path / "absent")


async def test_probes_open_with_keys(serve, make_settings) -> None:
    settings = make_settings(api_keys=[KEY])
    async with serve(settings) as served:
        health = await served.client.get("/healthz")
        ready = await served.client.get("/readyz")
        metrics = await served.client.get("/metrics")
    assert health.status_code == 200
    assert ready.status_code == 200
    assert metrics.status_code == 200, "metrics are open unless SONOMASK_PROTECT_METRICS is set"


async def test_metrics_protected_when_set(serve, make_settings) -> None:
    settings = make_settings(api_keys=[KEY], protect_metrics=True)
    async with serve(settings) as served:
        anonymous = await served.client.get("/metrics")
        wrong = await served.client.get("/metrics", headers={"X-API-Key": OTHER_KEY})
        keyed = await served.client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
        ready = await served.client.get("/readyz")
    assert anonymous.status_code == 401
    assert wrong.status_code == 403
    assert keyed.status_code == 200
    assert "sonomask_ready 1.0" in keyed.text
    assert ready.status_code == 200


async def test_stream_routes_need_key(serve, make_settings) -> None:
    settings = make_settings(api_keys=[KEY])
    async with serve(settings) as served:
        if "/v1/streams" not in _paths(served):
            pytest.skip("this build has no stream routes")
        offer = {"sdp": "v=0\r\n", "type": "offer"}
        opened = await served.client.post("/v1/streams", json=offer)
        wrong = await served.client.post("/v1/streams", json=offer, headers={"X-API-Key": "x"})
        closed = await served.client.delete("/v1/streams/some-session")
        keyed = await served.client.post("/v1/streams", json=offer, headers={"X-API-Key": KEY})
    assert opened.status_code == 401
    assert wrong.status_code == 403
    assert closed.status_code == 401
    # With the key the request reaches the offer check, which rejects an SDP without video.
    assert keyed.status_code == 422
    assert "no video" in keyed.json()["detail"]


async def test_key_checked_before_body_is_read(serve, make_settings) -> None:
    """A client without a key cannot make the server wait for or buffer a large body."""
    settings = make_settings(api_keys=[KEY])
    async with serve(settings) as served:
        port = int(served.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/mask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 40000000\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 401")


def _run_serve(host: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("SONOMASK_")}
    clean.update({"SONOMASK_PORT": "1", "YOLO_OFFLINE": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--host", host],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "scanner.example"])
def test_serve_refuses_public_host_without_keys(host: str) -> None:
    result = _run_serve(host)
    assert result.returncode == 2
    assert f"refusing to listen on {host} without API keys" in result.stderr
    assert "SONOMASK_ALLOW_PUBLIC_WITHOUT_KEYS=true" in result.stderr


def test_serve_refusal_ignores_empty_keys() -> None:
    result = _run_serve("0.0.0.0", SONOMASK_API_KEYS=" , ")
    assert result.returncode == 2
    assert "without API keys" in result.stderr
