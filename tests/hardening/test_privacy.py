"""Nothing stored: no pixel data or DICOM header value in the logs, no file written.

The corpus and real files go through the `sonomask serve` child, which logs JSON at DEBUG
level. Its output is then searched for pixel data and for every identifying value read from
the real DICOM headers, and its file writes are checked through the audit hook and by
listing its working, temporary and home folders. Failure messages name the DICOM keyword
and file, never the value.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from scripts.hardening.make_corpus import (
    STREAMS_ROUTE,
    all_cases,
    file_part,
    multipart,
    png_bytes,
)
from scripts.hardening.privacy import identifying_values, pixel_data_findings
from scripts.hardening.server import ServerProcess, list_files

CLIENT_FILE_NAME = "jane-roe-1984-03-07-scan.png"


def _send_real_files(client: httpx.Client, real_data: Path) -> list[int]:
    statuses = []
    images = sorted((real_data / "hc18").glob("*.png"))[:5] + sorted(
        (real_data / "stills").iterdir()
    )
    for path in images:
        media_type = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        for route in ("/v1/mask", "/v1/detect"):
            response = client.post(
                route, content=path.read_bytes(), headers={"Content-Type": media_type}
            )
            statuses.append(response.status_code)
    for path in sorted((real_data / "dicom").glob("*.dcm")):
        response = client.post(
            "/v1/mask", content=path.read_bytes(), headers={"Content-Type": "application/dicom"}
        )
        statuses.append(response.status_code)
    return statuses


def test_logs_and_disk_stay_clean(child_server: ServerProcess, real_data: Path) -> None:
    folders = [child_server.workdir / name for name in ("cwd", "tmp", "home")]
    before = {str(folder): list_files(folder) for folder in folders}
    mark = child_server.mark()

    with httpx.Client(base_url=child_server.base_url, timeout=120) as client:
        real_statuses = _send_real_files(client, real_data)
        for case in all_cases():
            if case.route != STREAMS_ROUTE:
                client.post(case.route, params=case.query, content=case.body, headers=case.headers)
        hc18_still = (real_data / "hc18" / "162_HC.png").read_bytes()
        named = multipart([file_part(hc18_still, "image/png", filename=CLIENT_FILE_NAME)])
        named_status = client.post(
            "/v1/mask",
            content=named,
            headers={"Content-Type": "multipart/form-data; boundary=corpus-boundary"},
        ).status_code

    lines = child_server.log_lines_since(mark)
    text = "\n".join(lines)
    after = {str(folder): list_files(folder) for folder in folders}
    header_values = [
        (path.name, keyword, value)
        for path in sorted((real_data / "dicom").glob("*.dcm"))
        for keyword, value in identifying_values(path)
    ]
    leaked = [f"{name}: {keyword}" for name, keyword, value in header_values if value in text]

    assert all(status == 200 for status in real_statuses), real_statuses
    assert named_status == 200
    assert len(lines) > 100, "the server logged too little for this check to mean anything"
    assert len(header_values) > 20, "the real DICOM files gave too few values to search for"
    assert leaked == []
    assert pixel_data_findings(lines) == []
    assert CLIENT_FILE_NAME not in text
    assert child_server.writes_since(mark) == []
    assert after == before


def test_pixel_patterns_catch_image_bytes() -> None:
    """The log search itself: each way of printing image bytes is caught."""
    import base64

    png = png_bytes(32, 32)
    printed = [
        f"frame {base64.b64encode(png).decode()}",
        f"frame {png.hex()}",
        f"frame {png[16:80]!r}",
        "frame [[ 12  40 200]\n [ 3 4 5]]",
        "frame \x00\x01 raw",
    ]
    for line in printed:
        assert pixel_data_findings([line]), line
    assert pixel_data_findings(['{"message": "POST /v1/mask 200 12.5 ms"}']) == []


async def test_api_keys_never_logged(
    serve, make_settings, caplog: pytest.LogCaptureFixture
) -> None:
    key = "secret-key-6f1c2a9d"
    wrong = "wrong-key-0b7e44c1"
    caplog.set_level(logging.DEBUG)
    statuses = []
    async with serve(make_settings(api_keys=[key])) as served:
        for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {wrong}"}, {}):
            response = await served.client.post(
                "/v1/mask",
                content=b"\x89PNG\r\n\x1a\n",
                headers={"Content-Type": "image/png", **headers},
            )
            statuses.append(response.status_code)

    assert statuses == [400, 403, 401]
    assert "POST /v1/mask 403" in caplog.text, "the server's log lines were not captured"
    assert key not in caplog.text
    assert wrong not in caplog.text
