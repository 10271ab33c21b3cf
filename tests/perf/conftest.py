"""Models exported for the runtime tests: the untrained nano YOLO as dynamic and fixed ONNX."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def untrained_with_onnx(
    untrained_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The untrained `.pt` with a dynamic-axes `.onnx` beside it, as `sonomask export` writes."""
    from service.research.export import export_model

    folder = tmp_path_factory.mktemp("exported")
    weights = folder / untrained_model_path.name
    shutil.copy(untrained_model_path, weights)
    export_model(weights, "onnx", 320)
    return weights


@pytest.fixture(scope="session")
def fixed_batch_onnx(untrained_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained model exported for a fixed 1×3×320×320 input."""
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("fixed")
    weights = folder / untrained_model_path.name
    shutil.copy(untrained_model_path, weights)
    model = YOLO(str(weights), task="detect")
    return Path(model.export(format="onnx", imgsz=320, dynamic=False, batch=1, device="cpu"))
