"""The `sonomask` command line, run as a user would run it: a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _run(
    args: list[str], env_overrides: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "YOLO_OFFLINE": "1", **env_overrides}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mask_folder_writes_same_files(untrained_model_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)).save(source / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 50), dtype=np.uint8)).save(
        source / "nested" / "b.png"
    )
    (source / "notes.txt").write_text("ignored")
    report_path = tmp_path / "report.json"

    result = _run(
        ["mask", str(source), "--out", str(tmp_path / "out"), "--report", str(report_path)],
        {"SONOMASK_MODEL_PATH": str(untrained_model_path)},
        tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out" / "a.jpg").size == (130, 90)
    assert Image.open(tmp_path / "out" / "nested" / "b.png").size == (50, 70)
    assert not (tmp_path / "out" / "notes.txt").exists()
    report = json.loads(report_path.read_text())
    assert report["model_id"].startswith("untrained-n@")
    assert sorted(entry["file"] for entry in report["files"]) == ["a.jpg", "nested/b.png"]
    assert all(entry["decision"] in {"masked", "clear"} for entry in report["files"])


def test_mask_reports_broken_file(untrained_model_path: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buffer, format="JPEG")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(buffer.getvalue()[:100])

    result = _run(
        ["mask", str(broken), "--out", str(tmp_path / "out")],
        {"SONOMASK_MODEL_PATH": str(untrained_model_path)},
        tmp_path,
    )

    assert result.returncode == 1
    assert "masked 0 of 1 files" in result.stderr
    assert not (tmp_path / "out" / "broken.jpg").exists()


def test_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    result = _run(["serve"], {"SONOMASK_CONF": "2.5"}, tmp_path)
    assert result.returncode == 2
    assert "conf" in result.stderr
    assert "2.5" in result.stderr


def test_help_lists_commands(tmp_path: Path) -> None:
    result = _run(["--help"], {}, tmp_path)
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "mask" in result.stdout
