"""Session parts without a network: lifecycle rules, the latest-frame slot, ICE settings."""

from __future__ import annotations

import asyncio

import pytest

from service.config import Settings
from service.metrics import Metrics
from service.tracking import HoldConfig
from service.webrtc import (
    IllegalTransitionError,
    LatestSlot,
    SessionState,
    SlotClosedError,
    StreamSession,
    ice_servers_from,
)


def make_session() -> StreamSession:
    return StreamSession(
        "test-session",
        pipeline_source=lambda: None,
        settings=Settings(),
        metrics=Metrics(),
        hold_config=HoldConfig(),
        on_ended=lambda session, reason: None,
    )


async def test_session_follows_lifecycle() -> None:
    session = make_session()
    for state in (
        SessionState.CONNECTING,
        SessionState.ACTIVE,
        SessionState.CLOSING,
        SessionState.CLOSED,
    ):
        session.transition(state)
        assert session.state is state
    await session.pc.close()


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((), SessionState.ACTIVE),
        ((), SessionState.CLOSED),
        ((SessionState.CONNECTING, SessionState.ACTIVE), SessionState.CONNECTING),
        ((SessionState.CLOSING,), SessionState.ACTIVE),
        ((SessionState.CLOSING, SessionState.CLOSED), SessionState.CLOSING),
    ],
)
async def test_session_rejects_illegal_transition(
    path: tuple[SessionState, ...], illegal: SessionState
) -> None:
    session = make_session()
    for state in path:
        session.transition(state)

    with pytest.raises(IllegalTransitionError, match=f"to {illegal}"):
        session.transition(illegal)
    await session.pc.close()


async def test_slot_keeps_only_newest() -> None:
    slot: LatestSlot[int] = LatestSlot()

    first_replaced = slot.put(1)
    second_replaced = slot.put(2)
    taken = await slot.get()

    assert first_replaced is None
    assert second_replaced == 1
    assert taken == 2


async def test_slot_wakes_waiting_getter() -> None:
    slot: LatestSlot[str] = LatestSlot()
    waiter = asyncio.create_task(slot.get())
    await asyncio.sleep(0)

    slot.put("frame")

    assert await asyncio.wait_for(waiter, 1.0) == "frame"


async def test_slot_close_ends_waiting_getter() -> None:
    slot: LatestSlot[str] = LatestSlot()
    waiter = asyncio.create_task(slot.get())
    await asyncio.sleep(0)

    slot.close()

    with pytest.raises(SlotClosedError):
        await asyncio.wait_for(waiter, 1.0)
    with pytest.raises(SlotClosedError):
        slot.put("late frame")


def test_no_ice_servers_by_default() -> None:
    assert ice_servers_from(Settings()) == []


def test_ice_credentials_only_for_turn() -> None:
    settings = Settings(
        ice_servers="stun:stun.example.invalid:3478,turn:turn.example.invalid:3478",
        ice_username="user",
        ice_credential="secret",
    )

    stun, turn = ice_servers_from(settings)

    assert stun.urls == "stun:stun.example.invalid:3478"
    assert stun.username is None
    assert turn.urls == "turn:turn.example.invalid:3478"
    assert turn.username == "user"
    assert turn.credential == "secret"
