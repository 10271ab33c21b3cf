"""`sonomask serve` on a read-only root filesystem with one writable directory.

This is what the Kubernetes manifests and docker-compose.yml ask of the image
(readOnlyRootFilesystem, with /tmp as the only writable path). No container engine runs
here, so the test builds the same conditions with a private mount namespace: the root mount
is remounted read-only, and a bind mount keeps one scratch directory writable. The settings
that the image sets for /tmp point at that directory instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

START_TIMEOUT_S = 40.0

# Runs inside the new mount namespace, then replaces itself with the service.
NAMESPACE_SCRIPT = r"""
set -e
mount --bind "$WRITABLE_DIR" "$WRITABLE_DIR"
mount -o remount,bind,ro /
if touch /.sonomask-write-probe 2>/dev/null || touch "$VENV_DIR/.sonomask-write-probe" 2>/dev/null
then
    echo "the root filesystem or the virtualenv is still writable" >&2
    exit 97
fi
exec "$@"
"""


def _namespaces_available(unshare: str) -> bool:
    probe = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "mount", "-o", "remount,bind,ro", "/"],
        capture_output=True,
        check=False,
        timeout=10,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_service_runs_on_read_only_root(
    untrained_model_path: Path, tmp_path: Path, pick_port: Callable[[], int]
) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or not _namespaces_available(unshare):
        pytest.skip("needs unshare and the right to mount in a new mount namespace (root)")

    writable = tmp_path / "writable"
    writable.mkdir()
    port = pick_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "WRITABLE_DIR": str(writable),
        "VENV_DIR": sys.prefix,
        # The image's settings, with /tmp replaced by the writable directory.
        "HOME": str(writable),
        "TMPDIR": str(writable),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(writable / "ultralytics"),
        "MPLCONFIGDIR": str(writable / "matplotlib"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "SONOMASK_MODEL_PATH": str(untrained_model_path),
        "SONOMASK_PORT": str(port),
        "SONOMASK_LOG_LEVEL": "WARNING",
    }
    namespace = [unshare, "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT]
    serve = [sys.executable, "-m", "service.cli", "serve"]
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*namespace, "sh", *serve],
            env=env,
            cwd="/",
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = _wait_ready(url, process)
        assert ready, f"not ready within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"

        image = np.full((240, 320, 3), 120, dtype=np.uint8)
        png = cv2.imencode(".png", image)[1].tobytes()
        masked = httpx.post(
            f"{url}/v1/mask", content=png, headers={"Content-Type": "image/png"}, timeout=30
        )
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
    finally:
        process.terminate()
        process.wait(timeout=15)

    assert masked.status_code == 200, masked.text
    assert masked.headers["content-type"] == "image/png"
    checked = re.findall(
        r'^sonomask_frames_total\{decision="(masked|clear)",source="rest"\} 1\.0$',
        metrics,
        re.MULTILINE,
    )
    assert len(checked) == 1, metrics
    assert process.returncode != 97, log.read_text()


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return False
