"""The benchmark harness against real servers: the app and the plain baseline, in subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.http_load import run_load, run_server
from bench.images import load_image_set


@pytest.fixture(scope="module")
def bodies() -> list[bytes]:
    return [image.png for image in load_image_set(4).images]


async def test_load_on_served_app(untrained_with_onnx: Path, bodies: list[bytes]) -> None:
    env = {
        "SONOMASK_MODEL_PATH": str(untrained_with_onnx),
        "SONOMASK_DEVICE": "cpu",
        "SONOMASK_SELFTEST_REQUIRE_DETECTION": "false",
        "SONOMASK_LOG_LEVEL": "WARNING",
    }
    with run_server("sonomask", "service.app:create_app", env, factory=True) as server:
        result = await run_load(
            server, "/v1/mask", bodies, content_type="image/png", concurrency=2, requests=6
        )
        memory = server.memory_mib()
    assert result.requests_ok == 6
    assert result.requests_failed == 0
    assert result.latency_p50_ms > 0
    assert "inference" in result.server_timing_p50_ms
    assert result.server_cpu_s_per_request > 0
    assert memory["rss_mib"] > 0


async def test_load_on_plain_server(untrained_model_path: Path, bodies: list[bytes]) -> None:
    env = {"PLAIN_MODEL": str(untrained_model_path)}
    with run_server("plain", "bench.plain_server:app", env) as server:
        result = await run_load(
            server, "/v1/mask", bodies, content_type="image/png", concurrency=2, requests=4
        )
    assert result.requests_ok == 4
    assert result.requests_failed == 0
    assert result.server_timing_p50_ms == {}
