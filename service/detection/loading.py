"""Build the detector the settings describe: which file, which backend, which thresholds."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from service.config import Backend, Settings
from service.detection.model import (
    Detector,
    ModelLoadError,
    UltralyticsDetector,
    backend_of,
    resolve_device,
)
from service.detection.runtimes import OnnxRuntimeDetector, OpenVinoDetector

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


# Fastest first. On 2 AMD EPYC cores (docs/benchmarks.md) the served app ran as fast on the
# lean ONNX Runtime detector as on OpenVINO in float32, with 125 MiB less memory, and each
# ran the model in 50-65 % of torch's time per image. ONNX Runtime comes first because the
# service always installs it. Intel CPUs may favour OpenVINO: compare both there.
# NOTE: the CUDA order is an expectation, not a measurement, because no GPU was available
# to time it. Run bench/gpu_check.sh on a GPU machine to confirm it.
CPU_PREFERENCE = (Backend.ONNX, Backend.OPENVINO, Backend.TORCH)
CUDA_PREFERENCE = (Backend.TENSORRT, Backend.TORCH, Backend.ONNX)

# The runtime each backend imports; a backend whose runtime is not installed is skipped by `auto`.
_RUNTIME_MODULES = {
    Backend.TORCH: "ultralytics",
    Backend.ONNX: "onnxruntime",
    Backend.OPENVINO: "openvino",
    Backend.TENSORRT: "tensorrt",
}


def export_candidates(path: Path) -> dict[Backend, Path]:
    """The file each backend would load for weights at `path`, exported or not yet.

    A `.pt` or `.onnx` path stands for the weights and their exported siblings with the
    same stem (`.pt`, `.onnx`, `.engine`, `_openvino_model/`). OpenVINO reads the `.onnx`
    itself when no OpenVINO export folder is there. Any other path is one exported form.
    """
    if path.suffix not in {".pt", ".onnx"}:
        return {Backend(backend_of(path)): path}
    openvino_folder = path.with_name(f"{path.stem}_openvino_model")
    return {
        Backend.TORCH: path.with_suffix(".pt"),
        Backend.ONNX: path.with_suffix(".onnx"),
        Backend.OPENVINO: openvino_folder
        if openvino_folder.is_dir()
        else path.with_suffix(".onnx"),
        Backend.TENSORRT: path.with_suffix(".engine"),
    }


def choose_weights(settings: Settings, device: str) -> tuple[Path, Backend]:
    """Pick the model file and backend; `auto` takes the fastest one available on `device`."""
    candidates = export_candidates(settings.model_path)
    backend = settings.backend
    if backend is Backend.AUTO:
        backend = fastest_available(candidates, device)
    if backend not in candidates:
        (only,) = candidates
        raise ModelLoadError(
            f"SONOMASK_BACKEND={backend.value} cannot run {settings.model_path.name}, which is "
            f"a {only.value} model: point SONOMASK_MODEL_PATH at the .pt or .onnx weights, or "
            f"set SONOMASK_BACKEND={only.value}"
        )
    chosen = candidates[backend]
    if not chosen.exists():
        raise ModelLoadError(
            f"backend {backend.value!r} needs {chosen}, which does not exist: export it with "
            f"`sonomask export`, or set SONOMASK_BACKEND=auto to use a file that exists"
        )
    return chosen, backend


def fastest_available(candidates: dict[Backend, Path], device: str) -> Backend:
    """Return the first backend in the device's preference order whose file and runtime exist."""
    on_cuda = device.startswith("cuda") or device.isdigit()
    preference = CUDA_PREFERENCE if on_cuda else CPU_PREFERENCE
    for backend in preference:
        path = candidates.get(backend)
        if path is None or not path.exists():
            continue
        if importlib.util.find_spec(_RUNTIME_MODULES[backend]) is None:
            continue
        if backend is Backend.ONNX and on_cuda and not _onnxruntime_has_cuda():
            continue
        if backend is Backend.OPENVINO and on_cuda:
            continue
        return backend
    files = ", ".join(str(path) for path in candidates.values())
    raise ModelLoadError(f"no runnable model among {files} on {device}")


def _onnxruntime_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def load_detector(settings: Settings) -> Detector:
    """Load the configured model; raises ModelLoadError with the file and the reason."""
    if not settings.model_path.exists():
        raise ModelLoadError(
            f"model file not found: {settings.model_path} (set SONOMASK_MODEL_PATH)"
        )
    device = resolve_device(settings.device)
    weights, backend = choose_weights(settings, device)
    card = ModelCard.read(settings.model_path)
    logger.info("loading model %s with backend %s on %s", weights.name, backend.value, device)
    imgsz = settings.imgsz or card.imgsz or 0
    conf = settings.conf or card.conf or STUDY_CONF
    iou = settings.iou or card.iou or STUDY_IOU
    max_detections = settings.max_detections
    if backend is Backend.ONNX:
        return OnnxRuntimeDetector(
            weights,
            device=device,
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            max_detections=max_detections,
            intra_op_threads=settings.onnx_threads,
            allow_spinning=settings.onnx_spinning,
        )
    if backend is Backend.OPENVINO:
        return OpenVinoDetector(
            weights, device=device, imgsz=imgsz, conf=conf, iou=iou, max_detections=max_detections
        )
    # torch, and TensorRT engines, which ultralytics loads with the tensorrt package.
    return UltralyticsDetector(
        weights, device=device, imgsz=imgsz, conf=conf, iou=iou, max_detections=max_detections
    )
