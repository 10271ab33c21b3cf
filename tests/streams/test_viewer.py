"""The viewer page in headless Chromium, streaming phantom sweeps from a file or a fake camera."""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from service.config import Settings
from service.research.phantoms import render_video_frames, write_video

CHROMIUM = Path("/usr/bin/chromium")
API_KEY = "viewer-test-key"
FPS = 15


@pytest.fixture(scope="module")
def chromium_paths() -> tuple[str, str]:
    driver = shutil.which("chromedriver")
    if not CHROMIUM.is_file() or driver is None:
        pytest.skip(
            "Chromium and chromedriver are missing: install the Debian packages "
            "chromium and chromium-driver (scripts/apt-packages.txt)"
        )
    return str(CHROMIUM), driver


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """Write BGR frames as raw 4:2:0 YUV4MPEG2, the format Chromium's fake camera reads."""
    height, width = frames[0].shape[:2]
    with path.open("wb") as handle:
        handle.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            handle.write(b"FRAME\n")
            handle.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())


def launch_chromium(chromium_paths: tuple[str, str], profile: Path, camera: Path | None):
    """Start headless Chromium; with `camera`, its fake camera plays that .y4m file in a loop."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths
    options = Options()
    options.binary_location = binary
    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream",
        # Host candidates on 127.0.0.1 with their real address, not an mDNS name.
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    if camera is not None:
        flags += [
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}",
        ]
    for flag in flags:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))


@pytest.fixture
def camera_browser(chromium_paths, tmp_path, stamp_index) -> Iterator[tuple[Any, dict]]:
    """Chromium whose camera plays a stamped phantom sweep; yields it and the truth by index."""
    # A sweep on which the shipped model finds the target in most frames.
    phantom = list(render_video_frames(seed=31, n_frames=60, size_wh=(320, 240)))
    frames = [stamp_index(frame.image_bgr, frame.index) for frame in phantom]
    truth = {
        frame.index: (stamped, [box for _, box in frame.boxes])
        for frame, stamped in zip(phantom, frames, strict=True)
    }
    camera = tmp_path / "camera.y4m"
    write_y4m(camera, frames, FPS)
    driver = launch_chromium(chromium_paths, tmp_path / "profile", camera)
    try:
        yield driver, truth
    finally:
        driver.quit()


@pytest.fixture
def file_browser(chromium_paths, tmp_path) -> Iterator[tuple[Any, Path]]:
    """Chromium without a camera, and a phantom sweep as an H.264 file to pick on the page."""
    video = write_video(tmp_path / "sweep.mp4", seed=12, n_frames=45, size_wh=(320, 240), fps=FPS)
    driver = launch_chromium(chromium_paths, tmp_path / "profile", None)
    try:
        yield driver, video
    finally:
        driver.quit()


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _counts(driver) -> dict[str, int]:
    return {d: int(_text(driver, f"count-{d}")) for d in ("masked", "held", "clear", "blanked")}


GRAB_MASKED_FRAME = """
const video = document.getElementById('masked');
if (!video.videoWidth) { return null; }
const canvas = document.createElement('canvas');
canvas.width = video.videoWidth;
canvas.height = video.videoHeight;
canvas.getContext('2d').drawImage(video, 0, 0);
return canvas.toDataURL('image/png');
"""


def _grab_masked_frame(driver) -> np.ndarray | None:
    data_url = driver.execute_script(GRAB_MASKED_FRAME)
    if not data_url:
        return None
    png = base64.b64decode(data_url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def _run_page(
    driver, base_url: str, frames_wanted: int, timeout_s: float, video: Path | None = None
) -> dict[str, int]:
    driver.get(f"{base_url}/")
    driver.find_element("id", "api-key").send_keys(API_KEY)
    if video is not None:
        driver.find_element("css selector", 'input[name="source"][value="file"]').click()
        driver.find_element("id", "file").send_keys(str(video))
    driver.find_element("id", "start").click()
    deadline = time.monotonic() + timeout_s
    counts = _counts(driver)
    while time.monotonic() < deadline and sum(counts.values()) < frames_wanted:
        error = _text(driver, "error")
        if error:
            raise AssertionError(f"the viewer page reports: {error}")
        time.sleep(0.2)
        counts = _counts(driver)
    return counts


async def test_viewer_streams_video_file(serve, file_browser, untrained_model_path) -> None:
    driver, video = file_browser
    settings = Settings(
        model_path=untrained_model_path, api_keys=[API_KEY], selftest_require_detection=False
    )
    async with serve(settings) as served:
        counts = await asyncio.to_thread(_run_page, driver, served.base_url, 20, 60.0, video)
        active_while_streaming = await served.metric("sonomask_streams_active")
        model = await asyncio.to_thread(_text, driver, "model")
        await asyncio.to_thread(driver.find_element("id", "stop").click)
        for _ in range(50):
            if await served.metric("sonomask_streams_active") == 0:
                break
            await asyncio.sleep(0.1)
        active_after_stop = await served.metric("sonomask_streams_active")
        state = await asyncio.to_thread(_text, driver, "state")

    assert counts["clear"] >= 20
    assert counts["blanked"] == 0
    assert model.startswith("untrained-n@")
    assert active_while_streaming == 1
    assert active_after_stop == 0
    assert state == "closed"


async def test_viewer_without_key_shows_error(serve, file_browser, untrained_model_path) -> None:
    driver, video = file_browser
    settings = Settings(
        model_path=untrained_model_path, api_keys=[API_KEY], selftest_require_detection=False
    )

    def start_without_key(base_url: str) -> str:
        driver.get(f"{base_url}/")
        driver.find_element("css selector", 'input[name="source"][value="file"]').click()
        driver.find_element("id", "file").send_keys(str(video))
        driver.find_element("id", "start").click()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _text(driver, "error"):
            time.sleep(0.1)
        return _text(driver, "error")

    async with serve(settings) as served:
        error = await asyncio.to_thread(start_without_key, served.base_url)
        active = await served.metric("sonomask_streams_active")

    assert "401" in error
    assert "missing API key" in error
    assert active == 0


@pytest.mark.slow
async def test_viewer_camera_masks_targets(
    serve, camera_browser, default_model_path, read_index, covered_fraction
) -> None:
    driver, truth = camera_browser
    settings = Settings(model_path=default_model_path, api_keys=[API_KEY])
    async with serve(settings) as served:
        counts = await asyncio.to_thread(_run_page, driver, served.base_url, 45, 60.0)
        grabs = []
        for _ in range(40):
            image = await asyncio.to_thread(_grab_masked_frame, driver)
            if image is not None:
                grabs.append(image)
            await asyncio.sleep(0.1)
        active_while_streaming = await served.metric("sonomask_streams_active")
        fps = float(await asyncio.to_thread(_text, driver, "fps"))
        model = await asyncio.to_thread(_text, driver, "model")

        await asyncio.to_thread(driver.find_element("id", "stop").click)
        for _ in range(50):
            if await served.metric("sonomask_streams_active") == 0:
                break
            await asyncio.sleep(0.1)
        active_after_stop = await served.metric("sonomask_streams_active")

    assert sum(counts.values()) >= 45
    assert counts["masked"] > 0
    assert counts["blanked"] == 0
    assert model.startswith("sonomask-demo-n@")
    assert fps > 0
    assert active_while_streaming == 1
    assert active_after_stop == 0

    # Frames grabbed from the page's masked video, matched to the sent frames by their marker.
    readable = [(read_index(image), image) for image in grabs]
    readable = [(index, image) for index, image in readable if index in truth]
    assert len(readable) >= 10
    shares = [
        covered_fraction(image, truth[index][0], box)
        for index, image in readable
        for box in truth[index][1]
    ]
    assert any(share >= 0.95 for share in shares)
