"""Build the detector the settings describe: which file, which backend, which thresholds."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from service.config import Backend, Settings
from service.detection.model import ModelLoadError, UltralyticsDetector, resolve_device

logger = logging.getLogger(__name__)

STUDY_CONF = 0.318
STUDY_IOU = 0.6
FALLBACK_IMGSZ = 384


@dataclass(frozen=True)
class ModelCard:
    """Thresholds a model ships with in `<model>.json` beside its weights."""

    imgsz: int | None = None
    conf: float | None = None
    iou: float | None = None

    @classmethod
    def read(cls, weights: Path) -> ModelCard:
        sidecar = sidecar_path(weights)
        if not sidecar.is_file():
            return cls()
        try:
            values = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"invalid model sidecar {sidecar.name}: {exc}") from exc
        return cls(imgsz=values.get("imgsz"), conf=values.get("conf"), iou=values.get("iou"))


def sidecar_path(weights: Path) -> Path:
    stem = weights.name.removesuffix("_openvino_model")
    return weights.with_name(stem).with_suffix(".json")


def choose_weights(settings: Settings, device: str) -> tuple[Path, str]:
    """Pick the model file for the configured backend; `auto` prefers ONNX Runtime on CPU.

    The sibling files of `model_path` with the same stem (`.onnx`, `.engine`,
    `_openvino_model/`) are the exported forms of the same weights.
    """
    path = settings.model_path
    backend = settings.backend
    if backend is Backend.AUTO:
        backend = _fastest_available(path, device)
    candidates = {
        Backend.TORCH: path.with_suffix(".pt") if path.suffix == ".onnx" else path,
        Backend.ONNX: path.with_suffix(".onnx"),
        Backend.TENSORRT: path.with_suffix(".engine"),
        Backend.OPENVINO: path.with_name(f"{path.stem}_openvino_model"),
    }
    chosen = path if path.suffix not in {".pt", ".onnx"} else candidates[backend]
    if not chosen.exists():
        raise ModelLoadError(
            f"backend {backend.value!r} needs {chosen}, which does not exist: export it with "
            f"`sonomask export` or set SONOMASK_BACKEND=torch"
        )
    return chosen, backend.value


def _fastest_available(path: Path, device: str) -> Backend:
    if path.suffix != ".pt":
        return Backend.TORCH
    if device.startswith("cuda"):
        if path.with_suffix(".engine").exists() and importlib.util.find_spec("tensorrt"):
            return Backend.TENSORRT
        return Backend.TORCH
    if path.with_suffix(".onnx").exists() and importlib.util.find_spec("onnxruntime"):
        return Backend.ONNX
    if path.with_name(f"{path.stem}_openvino_model").exists() and importlib.util.find_spec(
        "openvino"
    ):
        return Backend.OPENVINO
    return Backend.TORCH


def load_detector(settings: Settings) -> UltralyticsDetector:
    """Load the configured model; raises ModelLoadError with the file and the reason."""
    if not settings.model_path.exists():
        raise ModelLoadError(
            f"model file not found: {settings.model_path} (set SONOMASK_MODEL_PATH)"
        )
    device = resolve_device(settings.device)
    weights, backend = choose_weights(settings, device)
    card = ModelCard.read(settings.model_path)
    logger.info("loading model %s with backend %s on %s", weights.name, backend, device)
    return UltralyticsDetector(
        weights,
        device=device,
        imgsz=settings.imgsz or card.imgsz or 0,
        conf=settings.conf or card.conf or STUDY_CONF,
        iou=settings.iou or card.iou or STUDY_IOU,
        max_detections=settings.max_detections,
    )
