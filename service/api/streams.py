"""Stream routes: start a WebRTC session from an offer, and close it."""

from __future__ import annotations

import json
import logging
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ValidationError

from service.api.deps import read_body
from service.webrtc import (
    MAX_OFFER_SDP_BYTES,
    OfferError,
    SessionLimitError,
    SessionManager,
    SessionNotFoundError,
    StreamsNotReadyError,
    ice_servers_from,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["streams"])

# The JSON around the SDP: its keys, quotes and the escaping of line breaks.
_MAX_OFFER_BODY_BYTES = 2 * MAX_OFFER_SDP_BYTES


class StreamOffer(BaseModel):
    """A WebRTC offer as `RTCPeerConnection.createOffer` returns it."""

    sdp: str
    type: Literal["offer"]


class StreamAnswer(BaseModel):
    """The server's answer; pass `sdp` and `type` to `setRemoteDescription`."""

    sdp: str
    type: str
    session_id: str


class IceServer(BaseModel):
    """One entry of `RTCConfiguration.iceServers`, as a browser takes it."""

    urls: str
    username: str | None = None
    credential: str | None = None


class IceServers(BaseModel):
    ice_servers: list[IceServer]


@router.get("/v1/streams/ice-servers", response_model=IceServers)
async def ice_servers(request: Request) -> IceServers:
    """The STUN and TURN servers a client should use to reach this service's media.

    TURN credentials are included, so the route is behind the API key like every `/v1` route.
    """
    servers = ice_servers_from(request.app.state.settings)
    return IceServers(
        ice_servers=[
            IceServer(urls=str(server.urls), username=server.username, credential=server.credential)
            for server in servers
        ]
    )


def _sessions(request: Request) -> SessionManager:
    sessions: SessionManager | None = getattr(request.app.state, "sessions", None)
    if sessions is None:
        raise HTTPException(
            503,
            detail="streams are not available: the service is starting",
            headers={"Retry-After": "2"},
        )
    return sessions


@router.post(
    "/v1/streams",
    response_model=StreamAnswer,
    responses={
        400: {"description": "malformed SDP, or an offer that cannot be negotiated"},
        413: {"description": "the SDP is larger than 64 KiB"},
        422: {"description": "no sendrecv video track in the offer, or an invalid body"},
        503: {"description": "the model is not ready, or every session slot is taken"},
    },
)
async def open_stream(request: Request) -> StreamAnswer:
    """Start a session: the answer's video track carries the masked video.

    Send the offer after ICE gathering has completed, because candidates cannot be added
    later. Open a data channel in the offer to receive one JSON message per outgoing frame.
    """
    sessions = _sessions(request)
    offer = _parse_offer(await read_body(request, _MAX_OFFER_BODY_BYTES))
    try:
        answer_sdp, answer_type, session_id = await sessions.open(offer.sdp, offer.type)
    except OfferError as exc:
        raise HTTPException(exc.status_code, detail=exc.detail) from exc
    except StreamsNotReadyError as exc:
        raise HTTPException(
            503, detail=f"{exc}: retry after /readyz answers 200", headers={"Retry-After": "2"}
        ) from exc
    except SessionLimitError as exc:
        raise HTTPException(
            503, detail=f"{exc}: retry later", headers={"Retry-After": "10"}
        ) from exc
    return StreamAnswer(sdp=answer_sdp, type=answer_type, session_id=session_id)


@router.delete(
    "/v1/streams/{session_id}",
    status_code=204,
    responses={404: {"description": "no open session has this id"}},
)
async def close_stream(session_id: str, request: Request) -> Response:
    """Close a session and release its peer connection."""
    try:
        await _sessions(request).close(session_id)
    except SessionNotFoundError:
        raise HTTPException(404, detail=f"no open stream session {session_id!r}") from None
    return Response(status_code=204)


def _parse_offer(body: bytes) -> StreamOffer:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, detail=f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPException(400, detail="the body is JSON nested too deeply") from None
    try:
        return StreamOffer.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise HTTPException(
            422, detail=f"expected a JSON object with 'sdp' and 'type': 'offer': {problems}"
        ) from None
