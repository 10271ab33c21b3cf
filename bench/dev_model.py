"""The model a benchmark runs: the shipped one, a given one, or an untrained stand-in.

The stand-in is ultralytics' `yolov8n.yaml` with two classes and random weights, exported
to ONNX with a dynamic batch. It times like the real nano model but finds nothing, so use
it only until trained weights exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from service.config import DEFAULT_MODEL_PATH

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sonomask-bench"
STAND_IN_IMGSZ = 320


def resolve_model(requested: Path | None) -> tuple[Path, bool]:
    """The `.pt` to benchmark and whether it is trained; exports a missing `.onnx` beside it."""
    if requested is not None:
        path, trained = requested, True
    elif DEFAULT_MODEL_PATH.is_file():
        path, trained = DEFAULT_MODEL_PATH, True
    else:
        path, trained = untrained_model(CACHE_DIR), False
    if path.suffix != ".pt":
        raise ValueError(f"expected .pt weights (exports are found beside them), got {path}")
    if not path.with_suffix(".onnx").is_file():
        export_onnx(path)
    return path, trained


def untrained_model(directory: Path) -> Path:
    """Build (once) the two-class nano YOLO with random weights in `directory`."""
    path = directory / "untrained-n.pt"
    if path.is_file():
        return path
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics.nn.tasks import DetectionModel

    directory.mkdir(parents=True, exist_ok=True)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.names = {0: "transverse", 1: "mid_sagittal"}
    torch.save({"model": model, "train_args": {"imgsz": STAND_IN_IMGSZ}}, path)
    return path


def export_onnx(weights: Path) -> Path:
    """Export `weights` beside itself to ONNX with dynamic axes, as `sonomask export` does."""
    from service.detection.loading import ModelCard
    from service.research.export import export_model

    imgsz = ModelCard.read(weights).imgsz or STAND_IN_IMGSZ
    return export_model(weights, "onnx", imgsz)
