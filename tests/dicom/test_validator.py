"""dciodvfy (dicom3tools) finds no error in a derived instance that its source did not have."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.dicom import mask_instance
from service.pipeline import FramePipeline

from .conftest import Case, dicom_settings

DCIODVFY = shutil.which("dciodvfy")

pytestmark = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools)"
)


def _errors(data: bytes, folder: Path) -> set[str]:
    """The error lines of dciodvfy, without the values it quotes."""
    path = folder / "instance.dcm"
    path.write_bytes(data)
    assert DCIODVFY is not None
    completed = subprocess.run(
        [DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    errors = set()
    for line in (completed.stdout + completed.stderr).splitlines():
        if not line.startswith("Error"):
            continue
        line = line.split(" = <")[0]  # the quoted value may hold patient details
        # dicom3tools cannot read deflated files and names the garbage tag it stopped at.
        errors.add(
            re.sub(r"</\([0-9a-f]{4},[0-9a-f]{4}\)> - Tag read failed", "Tag read failed", line)
        )
    return errors


def _is_inherited(error: str, source_errors: set[str]) -> bool:
    """Whether an error repeats a source error, as a reference to an invalid source UID does."""
    if error in source_errors:
        return True
    if "SourceImageSequence" not in error:
        return False
    message = error.split("> - ", 1)[-1]
    return any(existing.endswith(message) for existing in source_errors)


async def test_no_new_validator_errors(case: Case, pipeline: FramePipeline, tmp_path: Path) -> None:
    source = case.load()
    settings = dicom_settings()
    result = await mask_instance(
        source, pipeline, spec=None, new_tracker=None, blank_on_failure=False, settings=settings
    )

    source_errors = _errors(source, tmp_path)
    output_errors = _errors(result.data, tmp_path)
    new_errors = sorted(e for e in output_errors if not _is_inherited(e, source_errors))

    assert new_errors == []
