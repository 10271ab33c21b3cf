"""Route dependencies: the service's parts on app state, bounded request bodies, API keys."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import hmac
import logging
from dataclasses import dataclass

from fastapi import HTTPException, Request

from service.config import Settings
from service.metrics import Metrics
from service.pipeline import FramePipeline

logger = logging.getLogger(__name__)

# A request body that has not fully arrived this long after the handler starts reading it
# is abandoned with 408. The app sets `app.state.body_read_timeout_s` from
# SONOMASK_BODY_TIMEOUT_S; this is the fallback for an app state without it.
# NOTE: request headers have no such limit because uvicorn has no header-read timeout.
# A proxy in front can bound them.
BODY_READ_TIMEOUT_S = 60.0


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_pipeline(request: Request) -> FramePipeline:
    pipeline: FramePipeline | None = request.app.state.pipeline
    if pipeline is None or not pipeline.ready:
        request.app.state.metrics.rejections_total.labels(reason="not_ready").inc()
        raise HTTPException(
            503,
            detail="the model is not ready yet: retry after /readyz answers 200",
            headers={"Retry-After": "2"},
        )
    return pipeline


@dataclass(frozen=True)
class Upload:
    """A request body and the media type it declared."""

    data: bytes
    media_type: str


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Read the whole body in memory, raising 413 as soon as it passes `max_bytes`.

    A body that takes longer than `app.state.body_read_timeout_s` to arrive gets a 408.
    Memory grows by up to `max_bytes` for each upload in flight; `sonomask serve` caps those
    at SONOMASK_MAX_CONCURRENT_REQUESTS.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, detail=f"invalid Content-Length header {declared!r}")
        if int(declared) > max_bytes:
            raise HTTPException(
                413, detail=f"body of {declared} bytes is above the limit of {max_bytes} bytes"
            )
    timeout_s: float = getattr(request.app.state, "body_read_timeout_s", BODY_READ_TIMEOUT_S)
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise HTTPException(413, detail=f"body is above the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        request.app.state.metrics.rejections_total.labels(reason="body_timeout").inc()
        logger.warning("request body timed out after %g s with %d bytes received", timeout_s, size)
        raise HTTPException(
            408,
            detail=f"the request body did not arrive within {timeout_s:g} s: "
            "retry on a faster connection or send a smaller image",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """Read the image from a raw body or from the multipart field `file`, in memory only."""
    content_type = request.headers.get("content-type", "")
    body = await read_body(request, max_bytes)
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        return Upload(body, content_type)
    return _multipart_file(content_type, body)


def _multipart_file(content_type: str, body: bytes) -> Upload:
    # The stdlib parser keeps parts in memory; the form parser of Starlette spools large
    # parts to temporary files, which would write patient images to disk.
    if "boundary=" not in content_type:
        raise HTTPException(400, detail="multipart/form-data request has no boundary parameter")
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise HTTPException(400, detail="multipart/form-data body could not be parsed")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") != "file":
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        return Upload(data, part.get_content_type() if part.get("content-type") else "")
    raise HTTPException(422, detail="multipart/form-data request has no field named 'file'")


class ApiKeys:
    """SHA-256 digests of the accepted API keys; the keys themselves are not kept."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(key.encode("utf-8")).digest() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        # Compare against every digest so the time taken does not reveal which key matched.
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key") or None


async def require_api_key(request: Request) -> None:
    """401 without a key, 403 with a wrong one; open when no keys are configured."""
    keys: ApiKeys = request.app.state.api_keys
    if not keys.enabled:
        return
    key = presented_key(request)
    if key is None:
        request.app.state.metrics.rejections_total.labels(reason="unauthorized").inc()
        raise HTTPException(
            401,
            detail="missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not keys.accepts(key):
        request.app.state.metrics.rejections_total.labels(reason="forbidden").inc()
        raise HTTPException(403, detail="invalid API key")
