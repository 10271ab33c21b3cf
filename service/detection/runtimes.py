"""Detectors that run an exported YOLO model on ONNX Runtime or OpenVINO without ultralytics.

They letterbox, run the session and apply NMS with numpy and OpenCV (see `yolo.py`), so a
CPU service on these runtimes imports neither torch nor ultralytics. Measured on 2 CPU
cores, this trims several milliseconds per frame off ultralytics' own predictor on the
same runtime (figures in docs/benchmarks.md).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.detection.model import (
    CLASS_NAMES,
    Detection,
    ModelInfo,
    ModelLoadError,
    detections_from_arrays,
    file_sha256,
)
from service.detection.yolo import decode_batch, input_shape_hw, letterbox_batch

logger = logging.getLogger(__name__)

DEFAULT_IMGSZ = 384
DEFAULT_STRIDE = 32


@dataclass(frozen=True)
class ExportMetadata:
    """Metadata that ultralytics writes into an exported model: class names, input size, stride."""

    class_names: tuple[str, ...] = tuple(CLASS_NAMES)
    imgsz: int | None = None
    stride: int = DEFAULT_STRIDE

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> ExportMetadata:
        """Parse the metadata strings ultralytics stores in an ONNX file's metadata_props."""
        parsed: dict[str, Any] = {}
        for key in ("names", "imgsz", "stride"):
            if key in values:
                try:
                    parsed[key] = ast.literal_eval(values[key])
                except (ValueError, SyntaxError):
                    continue
        return cls.from_values(parsed)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ExportMetadata:
        names = values.get("names")
        class_names: tuple[str, ...] = tuple(CLASS_NAMES)
        if isinstance(names, dict) and names:
            class_names = tuple(str(names[key]) for key in sorted(names))
        elif isinstance(names, list | tuple) and names:
            class_names = tuple(str(name) for name in names)
        imgsz = values.get("imgsz")
        if isinstance(imgsz, list | tuple) and imgsz:
            imgsz = max(int(side) for side in imgsz)
        stride = values.get("stride")
        return cls(
            class_names=class_names,
            imgsz=int(imgsz) if isinstance(imgsz, int | float) else None,
            stride=int(stride) if isinstance(stride, int | float) and stride > 0 else 32,
        )


@dataclass(frozen=True)
class InputLayout:
    """The model input's fixed sizes; None where the exported graph leaves a size dynamic."""

    batch: int | None
    height: int | None
    width: int | None

    @property
    def spatially_dynamic(self) -> bool:
        return self.height is None or self.width is None


class ArrayDetector:
    """The part of a lean detector that is the same on every runtime: letterbox, run, decode.

    A runtime subclass sets `_run` (N×3×H×W float32 in, N×(4+C)×A out) and `_layout`.
    """

    def __init__(
        self,
        path: Path,
        *,
        backend: str,
        device: str,
        metadata: ExportMetadata,
        imgsz: int,
        conf: float,
        iou: float,
        max_detections: int,
        run: Callable[[np.ndarray], np.ndarray],
        layout: InputLayout,
    ) -> None:
        self._run = run
        self._layout = layout
        self._imgsz = _input_side(path, layout, imgsz or metadata.imgsz or DEFAULT_IMGSZ)
        self._stride = metadata.stride
        self._conf = conf
        self._iou = iou
        self._max_detections = max_detections
        self._info = ModelInfo(
            name=path.stem.removesuffix("_openvino_model"),
            sha256=file_sha256(path),
            class_names=metadata.class_names,
            imgsz=self._imgsz,
            backend=backend,
            device=device,
        )
        logger.info(
            "loaded model %s backend=%s device=%s imgsz=%d input=%s",
            self._info.model_id,
            backend,
            device,
            self._imgsz,
            "dynamic" if layout.spatially_dynamic else f"{layout.height}x{layout.width}",
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
        shape_hw = input_shape_hw(
            frames, self._imgsz, self._stride, rectangular=self._layout.spatially_dynamic
        )
        blob, placements = letterbox_batch(frames, shape_hw)
        output = self._run_in_chunks(blob)
        found = decode_batch(
            output,
            placements,
            conf=self._conf,
            iou=self._iou,
            max_detections=self._max_detections,
        )
        class_names = self._info.class_names
        return [
            detections_from_arrays(
                boxes.boxes_xyxy, boxes.scores, boxes.class_ids, class_names, *placement.size_wh
            )
            for boxes, placement in zip(found, placements, strict=True)
        ]

    def _run_in_chunks(self, blob: np.ndarray) -> np.ndarray:
        """Run the blob whole, or in slices of the model's fixed batch size, zero-padded."""
        fixed = self._layout.batch
        if fixed is None or fixed == blob.shape[0]:
            return self._run(blob)
        outputs = []
        for start in range(0, blob.shape[0], fixed):
            chunk = blob[start : start + fixed]
            if chunk.shape[0] < fixed:
                padding = np.zeros((fixed - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            outputs.append(self._run(chunk))
        return np.concatenate(outputs)[: blob.shape[0]]


def _input_side(path: Path, layout: InputLayout, requested: int) -> int:
    """Return the letterbox side: `requested` for a dynamic input, else the fixed export size."""
    if layout.height is None or layout.width is None:
        return requested
    fixed_side = max(layout.height, layout.width)
    if requested != fixed_side:
        logger.warning(
            "%s was exported for a fixed %dx%d input; using that instead of imgsz %d",
            path.name,
            layout.height,
            layout.width,
            requested,
        )
    return fixed_side


def _fixed(size: object) -> int | None:
    return size if isinstance(size, int) and size > 0 else None


# ONNX Runtime


def onnxruntime_providers(device: str) -> list[Any]:
    """Execution providers for `device`: CUDA first on `cuda[:N]`, else the CPU provider.

    Raises ModelLoadError when a GPU is requested but the installed onnxruntime has no
    CUDA provider, rather than quietly running on the CPU.
    NOTE: the CUDA branch has never run on a GPU; the tests cover only the refusal.
    """
    import onnxruntime

    if not device.startswith("cuda") and not device.isdigit():
        return ["CPUExecutionProvider"]
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            f"device {device!r} needs onnxruntime's CUDAExecutionProvider, but this build has "
            f"only {', '.join(available)}: install onnxruntime-gpu, or set SONOMASK_DEVICE=cpu"
        )
    device_id = int(device.partition(":")[2] or 0) if not device.isdigit() else int(device)
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


class OnnxRuntimeDetector(ArrayDetector):
    """An ultralytics ONNX export on ONNX Runtime, on the CPU or (with onnxruntime-gpu) CUDA."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        imgsz: int = 0,
        conf: float = 0.318,
        iou: float = 0.6,
        max_detections: int = 32,
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
    ) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        # Spinning worker threads hold their cores between operators. With other busy threads
        # (decoding, encoding, other processes) on 2 cores that made batch-1 inference about
        # twice as slow, so threads sleep between operators unless `allow_spinning`.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
        )
        providers = onnxruntime_providers(device)
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
            raise ModelLoadError(f"cannot load model {path.name}: {exc}") from exc

        model_input = session.get_inputs()[0]
        shape = list(model_input.shape) + [None] * (4 - len(model_input.shape))
        layout = InputLayout(_fixed(shape[0]), _fixed(shape[2]), _fixed(shape[3]))
        input_name = model_input.name
        metadata = ExportMetadata.from_strings(session.get_modelmeta().custom_metadata_map)

        def run(blob: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(None, {input_name: blob})[0])

        self._session = session
        super().__init__(
            path,
            backend="onnx",
            device=device if providers[0] != "CPUExecutionProvider" else "cpu",
            metadata=metadata,
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            max_detections=max_detections,
            run=run,
            layout=layout,
        )


# OpenVINO


def read_export_metadata(path: Path) -> ExportMetadata:
    """Metadata of an OpenVINO export folder (metadata.yaml) or of an ONNX file."""
    if path.is_dir():
        sidecar = path / "metadata.yaml"
        if not sidecar.is_file():
            return ExportMetadata()
        import yaml

        try:
            values = yaml.safe_load(sidecar.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelLoadError(f"invalid {sidecar}: {exc}") from exc
        return ExportMetadata.from_values(values if isinstance(values, dict) else {})
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return ExportMetadata.from_strings({prop.key: prop.value for prop in model.metadata_props})


def openvino_model_file(path: Path) -> Path:
    """Return the file OpenVINO reads: the .xml in an export folder, or the path itself."""
    if not path.is_dir():
        return path
    candidates = sorted(path.glob("*.xml"))
    if not candidates:
        raise ModelLoadError(f"no OpenVINO .xml model in {path}")
    return candidates[0]


class OpenVinoDetector(ArrayDetector):
    """An ultralytics export on the OpenVINO CPU runtime: an `_openvino_model` folder or ONNX."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        imgsz: int = 0,
        conf: float = 0.318,
        iou: float = 0.6,
        max_detections: int = 32,
        performance_hint: str = "LATENCY",
        inference_precision: str = "f32",
    ) -> None:
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        if device != "cpu":
            raise ModelLoadError(
                f"the OpenVINO backend runs on the CPU only, got device {device!r}: "
                "set SONOMASK_DEVICE=cpu or choose another SONOMASK_BACKEND"
            )
        import openvino

        core = openvino.Core()
        # OpenVINO runs in bfloat16 by default on CPUs that support it, which moved
        # confidences by about 0.01 against the float32 model on the shipped weights.
        # The thresholds were chosen in float32, so float32 is the default here.
        config = {
            "PERFORMANCE_HINT": performance_hint,
            "INFERENCE_PRECISION_HINT": inference_precision,
        }
        try:
            model = core.read_model(str(openvino_model_file(path)))
            compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise ModelLoadError(f"cannot load model {path.name}: {exc}") from exc

        partial = model.input(0).get_partial_shape()
        sizes = [
            partial[i].get_length()
            if i < partial.rank.get_length() and partial[i].is_static
            else None
            for i in range(4)
        ]
        layout = InputLayout(_fixed(sizes[0]), _fixed(sizes[2]), _fixed(sizes[3]))
        request = compiled.create_infer_request()

        def run(blob: np.ndarray) -> np.ndarray:
            request.infer({0: blob})
            # The output tensor is reused by the next call, and decoding copies what it keeps.
            return np.asarray(request.get_output_tensor(0).data)

        self._compiled = compiled
        super().__init__(
            path,
            backend="openvino",
            device="cpu",
            metadata=read_export_metadata(path),
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            max_detections=max_detections,
            run=run,
            layout=layout,
        )
