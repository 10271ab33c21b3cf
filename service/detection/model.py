"""The contract between the service and a detector, and its ultralytics implementation.

REST, streams, DICOM, the command line and the benchmarks all reach the model through
`Detector.predict`, which takes a batch of BGR uint8 frames and returns boxes in the pixel
coordinates of each frame.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.masking import clip_box_xyxy

logger = logging.getLogger(__name__)

CLASS_NAMES = ("transverse", "mid_sagittal")


@dataclass(frozen=True)
class Detection:
    """One detected region, `box_xyxy` in pixels of the frame it was found in."""

    class_id: int
    class_name: str
    confidence: float
    box_xyxy: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "confidence": round(self.confidence, 4),
            "box_xyxy": [round(v, 1) for v in self.box_xyxy],
        }


@dataclass(frozen=True)
class ModelInfo:
    """Description of a loaded model, for logs, metrics and responses."""

    name: str
    sha256: str
    class_names: tuple[str, ...]
    imgsz: int
    backend: str
    device: str

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "name": self.name,
            "sha256": self.sha256,
            "class_names": list(self.class_names),
            "imgsz": self.imgsz,
            "backend": self.backend,
            "device": self.device,
        }


class Detector(Protocol):
    """A model that finds regions to mask in a batch of frames."""

    @property
    def info(self) -> ModelInfo: ...

    def warmup(self) -> None:
        """Run the model once so the first real request pays no start-up cost."""

    def predict(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detect in each BGR uint8 frame (H×W×3); one list of detections per frame, in order."""
        ...


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable or not a detector."""


def resolve_device(device: str) -> str:
    """Map `auto` to `cuda:0` when torch sees a GPU, else `cpu`; pass other values through.

    torch is imported only on a machine that shows an NVIDIA device node, so that a CPU-only
    service running ONNX Runtime or OpenVINO never loads it.
    """
    if device != "auto":
        return device
    if not nvidia_device_present():
        return "cpu"
    try:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def nvidia_device_present() -> bool:
    """True when the NVIDIA driver exposes a device node (host, or a container given a GPU)."""
    return Path("/dev/nvidia0").exists() or Path("/dev/dxg").exists()


def backend_of(path: Path) -> str:
    """Name the runtime ultralytics uses for a model file or folder."""
    name = path.name.lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".engine"):
        return "tensorrt"
    if name.endswith("_openvino_model") or name.endswith(".xml"):
        return "openvino"
    if name.endswith((".pt", ".yaml", ".yml")):
        return "torch"
    raise ModelLoadError(
        f"unsupported model file {path.name!r}: expected .pt, .onnx, .engine, "
        "an OpenVINO *_openvino_model folder or a model .yaml"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class UltralyticsDetector:
    """Any ultralytics model file: `.pt`, ONNX, an OpenVINO folder or a TensorRT engine."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "auto",
        imgsz: int = 0,
        conf: float = 0.318,
        iou: float = 0.6,
        max_detections: int = 32,
    ) -> None:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_VERBOSE", "False")
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        backend = backend_of(path)

        from ultralytics import YOLO

        try:
            self._model = YOLO(str(path), task="detect")
        except Exception as exc:  # ultralytics raises many types for a bad file
            raise ModelLoadError(f"cannot load model {path.name}: {exc}") from exc

        names = self._model.names
        class_names = tuple(str(names[i]) for i in sorted(names)) if names else CLASS_NAMES
        overrides = getattr(self._model, "overrides", {}) or {}
        trained_imgsz = overrides.get("imgsz")
        if isinstance(trained_imgsz, list | tuple):
            trained_imgsz = max(trained_imgsz)
        self._imgsz = imgsz or int(trained_imgsz or 384)
        self._device = resolve_device(device)
        self._conf = conf
        self._iou = iou
        self._max_detections = max_detections
        self._info = ModelInfo(
            name=path.stem.removesuffix("_openvino_model"),
            sha256=file_sha256(path),
            class_names=class_names,
            imgsz=self._imgsz,
            backend=backend,
            device=self._device,
        )
        logger.info(
            "loaded model %s backend=%s device=%s imgsz=%d",
            self._info.model_id,
            backend,
            self._device,
            self._imgsz,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def warmup(self) -> None:
        blank = np.zeros((self._imgsz, self._imgsz, 3), dtype=np.uint8)
        self.predict([blank])

    def predict(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        if not frames:
            return []
        results = self._model.predict(
            list(frames),
            imgsz=self._imgsz,
            conf=self._conf,
            iou=self._iou,
            device=self._device,
            max_det=self._max_detections,
            verbose=False,
        )
        batch: list[list[Detection]] = []
        for frame, result in zip(frames, results, strict=True):
            height, width = frame.shape[:2]
            xyxy, confs, classes = _boxes_as_arrays(result)
            batch.append(
                detections_from_arrays(xyxy, confs, classes, self._info.class_names, width, height)
            )
        return batch


def detections_from_arrays(
    boxes_xyxy: np.ndarray,
    confidences: np.ndarray,
    class_ids: np.ndarray,
    class_names: Sequence[str],
    width: int,
    height: int,
) -> list[Detection]:
    """Build detections from K×4 boxes, K confidences and K class indices of one frame.

    Boxes are clipped to the frame, and a box with no area left inside it is dropped.
    """
    detections = []
    for box, confidence, class_index in zip(
        boxes_xyxy.tolist(), confidences.tolist(), class_ids.tolist(), strict=True
    ):
        clean = clip_box_xyxy(box, width, height)
        if clean is None:
            continue
        class_id = int(class_index)
        name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
        detections.append(Detection(class_id, name, float(confidence), clean))
    return detections


def _boxes_as_arrays(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (N×4 xyxy), confidences and class indices of one ultralytics result."""
    boxes = getattr(result, "boxes", None)
    if boxes is None:
        return np.empty((0, 4)), np.empty(0), np.empty(0)
    return (
        np.asarray(boxes.xyxy.cpu().numpy()),
        np.asarray(boxes.conf.cpu().numpy()),
        np.asarray(boxes.cls.cpu().numpy()),
    )
