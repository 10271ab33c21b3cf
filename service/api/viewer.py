"""The viewer page at `/`: stream a camera or a local video file and watch the masked result.

The page and its script and style are served from `service/static/`, so it works with no
network access beyond this service.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

_MEDIA_TYPES = {
    "viewer.js": "text/javascript",
    "viewer.css": "text/css",
}

# The page loads only its own script and style, and talks only to this origin.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/")
async def viewer_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "viewer.html", media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/static/{name}")
async def viewer_asset(name: str) -> FileResponse:
    media_type = _MEDIA_TYPES.get(name)
    if media_type is None:
        raise HTTPException(404, detail=f"no static file {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_PAGE_HEADERS)
