"""The ICE server list the viewer fetches before it opens a peer connection."""

from __future__ import annotations

from pathlib import Path

from service.config import Settings


async def test_no_ice_servers_by_default(serve, untrained_model_path: Path) -> None:
    settings = Settings(model_path=untrained_model_path, selftest_require_detection=False)
    async with serve(settings) as served:
        response = await served.client.get("/v1/streams/ice-servers")
    assert response.status_code == 200
    assert response.json() == {"ice_servers": []}


async def test_turn_credentials_need_a_key(serve, untrained_model_path: Path) -> None:
    settings = Settings(
        model_path=untrained_model_path,
        selftest_require_detection=False,
        ice_servers=["stun:stun.example.test:3478", "turn:turn.example.test:3478"],
        ice_username="viewer",
        ice_credential="turn-secret",
        api_keys=["k1"],
    )
    async with serve(settings) as served:
        anonymous = await served.client.get("/v1/streams/ice-servers")
        allowed = await served.client.get(
            "/v1/streams/ice-servers", headers={"Authorization": "Bearer k1"}
        )
    assert anonymous.status_code == 401
    assert allowed.status_code == 200
    assert allowed.json()["ice_servers"] == [
        {"urls": "stun:stun.example.test:3478", "username": None, "credential": None},
        {"urls": "turn:turn.example.test:3478", "username": "viewer", "credential": "turn-secret"},
    ]
