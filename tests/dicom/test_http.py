"""`POST /v1/mask` with Content-Type application/dicom on the real app, and `sonomask mask`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.pixels import iter_pixels

from service.config import Settings

from .conftest import pydicom_file, real_file

DICOM = {"Content-Type": "application/dicom"}


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"deadline_ms": 60_000.0, "max_wait_ms": 1.0}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _decisions(header: str) -> dict[str, int]:
    pairs = (item.split("=") for item in header.split(","))
    return {decision: int(count) for decision, count in pairs}


async def test_cine_masked_over_http(serve, real_detector) -> None:  # type: ignore[no-untyped-def]
    source = pydicom_file("examples_ybr_color.dcm")
    async with serve(_settings(), detector=real_detector) as served:
        response = await served.client.post("/v1/mask", content=source, headers=DICOM)
        counted = sum(
            [
                await served.metric(
                    "sonomask_frames_total", {"source": "dicom", "decision": decision}
                )
                for decision in ("masked", "held", "clear", "blanked")
            ]
        )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["X-Sonomask-Frames"] == "30"
    assert sum(_decisions(response.headers["X-Sonomask-Decisions"]).values()) == 30
    assert counted == 30
    derived = pydicom.dcmread(io.BytesIO(response.content))
    assert derived.SOPInstanceUID != pydicom.dcmread(io.BytesIO(source)).SOPInstanceUID
    assert len(list(iter_pixels(derived))) == 30


async def test_bad_dicom_gets_reason_over_http(serve, real_detector) -> None:  # type: ignore[no-untyped-def]
    async with serve(_settings(), detector=real_detector) as served:
        report = await served.client.post(
            "/v1/mask", content=pydicom_file("test-SR.dcm"), headers=DICOM
        )
        not_dicom = await served.client.post("/v1/mask", content=b"\x89PNG....", headers=DICOM)

    assert report.status_code == 422
    assert "no Pixel Data" in report.json()["detail"]
    assert not_dicom.status_code == 415
    assert "not a DICOM Part 10 file" in not_dicom.json()["detail"]


async def test_too_many_frames_over_http(serve, real_detector) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(max_dicom_frames=5)
    async with serve(settings, detector=real_detector) as served:
        response = await served.client.post(
            "/v1/mask", content=pydicom_file("examples_ybr_color.dcm"), headers=DICOM
        )

    assert response.status_code == 413
    assert "30 frames" in response.json()["detail"]


async def test_detector_failure_over_http(serve, faulty_detector) -> None:  # type: ignore[no-untyped-def]
    source = real_file("OBXXXX1A_rle_2frame.dcm")
    async with serve(_settings(), detector=faulty_detector) as served:
        faulty_detector.fault = "raise"
        refused = await served.client.post("/v1/mask", content=source, headers=DICOM)
        blanked = await served.client.post(
            "/v1/mask", content=source, headers=DICOM, params={"on_failure": "blank"}
        )

    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert "could not be checked" in refused.json()["detail"]
    assert blanked.status_code == 200
    assert _decisions(blanked.headers["X-Sonomask-Decisions"])["blanked"] == 2


@pytest.mark.slow  # a subprocess that imports torch and loads the model: about 10 s
def test_mask_command_writes_dicom(untrained_model_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    (source / "cine.dcm").write_bytes(real_file("OBXXXX1A_rle_2frame.dcm"))
    report_path = tmp_path / "report.json"
    env = {**os.environ, "YOLO_OFFLINE": "1", "SONOMASK_MODEL_PATH": str(untrained_model_path)}

    command = [sys.executable, "-m", "service.cli", "mask", str(source)]
    command += ["--out", str(tmp_path / "out"), "--report", str(report_path)]
    result = subprocess.run(
        command,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    derived = pydicom.dcmread(tmp_path / "out" / "cine.dcm")
    assert derived.ImageType[0] == "DERIVED"
    assert int(derived.NumberOfFrames) == 2
    entry = json.loads(report_path.read_text())["files"][0]
    assert entry["frames"] == 2
    assert sum(entry["decisions"].values()) == 2
