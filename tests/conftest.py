"""Fixtures every test folder shares: models, a real server on loopback, and fault detectors."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

from service.app import create_app
from service.config import DEFAULT_MODEL_PATH, Settings
from service.detection.model import Detection, ModelInfo

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def untrained_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-class nano YOLO with random weights, built from ultralytics' own yaml.

    It loads and runs like any model file but finds nothing: right for plumbing tests.
    """
    import torch
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.names = {0: "transverse", 1: "mid_sagittal"}
    path = tmp_path_factory.mktemp("models") / "untrained-n.pt"
    torch.save({"model": model, "train_args": {"imgsz": 320}}, path)
    return path


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The trained demonstration model the package ships."""
    if not DEFAULT_MODEL_PATH.is_file():
        pytest.fail(f"the shipped model is missing: {DEFAULT_MODEL_PATH}")
    return DEFAULT_MODEL_PATH


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real ultrasound data not found at {SHARED_DATA}")
    return SHARED_DATA


@dataclass
class Served:
    """A running app on loopback and an HTTP client for it."""

    app: Any
    client: httpx.AsyncClient
    base_url: str

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The value of one sample on /metrics; 0 when it is absent."""
        text = (await self.client.get("/metrics")).text
        return parse_metric(text, name, labels or {})


def parse_metric(text: str, name: str, labels: dict[str, str]) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample_name = head.split("{")[0]
        if sample_name != name:
            continue
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return 0.0


ServeFactory = Callable[..., AbstractAsyncContextManager[Served]]


@pytest.fixture
def serve() -> ServeFactory:
    """Start the real app under uvicorn on 127.0.0.1 (a free port) and wait until it is ready."""

    @asynccontextmanager
    async def start(
        settings: Settings | None = None,
        *,
        detector: Any = None,
        wait_ready: bool = True,
        **overrides: Any,
    ) -> AsyncIterator[Served]:
        settings = settings if settings is not None else Settings(**overrides)
        app = create_app(settings, detector=detector)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                if task.done() or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start")
                await asyncio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            base_url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
                if wait_ready:
                    await _wait_ready(client)
                yield Served(app, client, base_url)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)

    return start


async def _wait_ready(client: httpx.AsyncClient, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await client.get("/readyz")
        if response.status_code == 200:
            return
        detail = response.json().get("detail", "")
        if detail.startswith("start-up failed"):
            raise RuntimeError(detail)
        await asyncio.sleep(0.05)
    raise TimeoutError("the app did not become ready")


class FaultyDetector:
    """A detector for fault injection: it returns no boxes until a fault is switched on.

    Faults: `raise` (an exception), `hang` (blocks until released), `slow` (sleeps
    `delay_s`), `nan` (non-finite boxes), `outside` (boxes off the frame or inverted),
    `flood` (far too many boxes), `wrong_length` (fewer results than frames), `not_numbers`
    (box coordinates that are not numbers).
    """

    def __init__(self, boxes: Sequence[Detection] = ()) -> None:
        self.fault: str | None = None
        self.delay_s = 0.5
        self.boxes = list(boxes)
        self.calls = 0
        self._release = threading.Event()
        self._info = ModelInfo(
            name="faulty",
            sha256="0" * 64,
            class_names=("transverse", "mid_sagittal"),
            imgsz=320,
            backend="fake",
            device="cpu",
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def warmup(self) -> None:
        return None

    def release(self) -> None:
        self._release.set()

    def predict(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        self.calls += 1
        fault = self.fault
        if fault == "raise":
            raise RuntimeError("injected detector failure")
        if fault == "hang":
            self._release.wait(timeout=30)
        if fault == "slow":
            time.sleep(self.delay_s)
        if fault == "wrong_length":
            return [[] for _ in frames[1:]]
        results = []
        for frame in frames:
            height, width = frame.shape[:2]
            if fault == "nan":
                box = (float("nan"), 0.0, 10.0, 10.0)
                results.append([Detection(0, "transverse", 0.9, box)])
            elif fault == "outside":
                inverted = (width * 0.6, height * 0.6, width * 0.2, -50.0)
                off_frame = (width + 10.0, 0.0, width + 90.0, 40.0)
                results.append(
                    [
                        Detection(0, "transverse", 0.9, inverted),
                        Detection(1, "mid_sagittal", 0.8, off_frame),
                    ]
                )
            elif fault == "not_numbers":
                box = (None, "left", 10.0, 10.0)
                results.append([Detection(0, "transverse", 0.9, box)])  # type: ignore[arg-type]
            elif fault == "flood":
                box = (0.0, 0.0, 5.0, 5.0)
                results.append([Detection(0, "transverse", 0.5, box)] * 5000)
            else:
                results.append(list(self.boxes))
        return results


@pytest.fixture
def faulty_detector() -> Iterator[FaultyDetector]:
    detector = FaultyDetector()
    yield detector
    detector.release()
