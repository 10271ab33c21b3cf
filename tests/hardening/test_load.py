"""Load and soak in short form against the `sonomask serve` child.

The full form (2,000 requests, 50 sessions) is `python -m scripts.hardening.run_load`.
"""

from __future__ import annotations

import aioice.ice
import httpx
import pytest

from scripts.hardening.run_load import load_image, send_load, streams_active
from scripts.hardening.server import ServerProcess
from scripts.hardening.stream_client import churn_sessions

RSS_GROWTH_LIMIT = 0.10


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offer only 127.0.0.1 as this process's ICE host candidate, as the child server does."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def test_rest_load_short(child_server: ServerProcess) -> None:
    body, content_type, _ = load_image(None)
    warmup = await send_load(child_server.base_url, body, content_type, requests=64, concurrency=32)
    rss_warm = child_server.rss_bytes()
    result = await send_load(
        child_server.base_url, body, content_type, requests=200, concurrency=32
    )
    rss_after = child_server.rss_bytes()

    assert warmup.server_errors == 0
    assert result.transport_errors == []
    assert result.server_errors == 0, result.statuses
    assert result.missing_retry_after == 0
    assert set(result.statuses) <= {200, 503}
    assert result.statuses[200] > 0
    assert rss_after <= rss_warm * (1 + RSS_GROWTH_LIMIT), (
        f"RSS grew from {rss_warm / 2**20:.0f} MiB to {rss_after / 2**20:.0f} MiB"
    )


async def test_session_churn_short(child_server: ServerProcess, loopback_ice: None) -> None:
    async with httpx.AsyncClient(base_url=child_server.base_url, timeout=60) as client:
        if "/v1/streams" not in (await client.get("/openapi.json")).json()["paths"]:
            pytest.skip("this build has no stream routes")
        await churn_sessions(client, 2)
        rss_warm = child_server.rss_bytes()
        churn = await churn_sessions(client, 10)
        active = await streams_active(client)
    rss_after = child_server.rss_bytes()

    assert churn.errors == []
    assert churn.opened == 10
    assert churn.connected == 10
    assert churn.with_frames == 10
    assert churn.closed == 10
    assert active == 0.0
    assert rss_after <= rss_warm * (1 + RSS_GROWTH_LIMIT), (
        f"RSS grew from {rss_warm / 2**20:.0f} MiB to {rss_after / 2**20:.0f} MiB"
    )
