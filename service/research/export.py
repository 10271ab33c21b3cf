"""Export of a trained `.pt` model to ONNX (dynamic batch) or OpenVINO for CPU serving."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

FORMATS = ("onnx", "openvino")


class ExportError(RuntimeError):
    """The export could not run: a missing package or an unsupported request."""


def export_model(model_path: Path, fmt: str, imgsz: int, out_path: Path | None = None) -> Path:
    """Export `model_path` and return the written file (ONNX) or folder (OpenVINO).

    The ONNX graph has dynamic batch, height and width axes, so the service can batch frames.
    `out_path` moves the result there; by default ultralytics writes it beside the model.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unsupported export format {fmt!r}; expected one of {FORMATS}")
    model_path = Path(model_path)
    if not model_path.is_file() or model_path.suffix != ".pt":
        raise ExportError(f"expected an existing .pt model file, got {model_path}")
    if fmt == "openvino" and importlib.util.find_spec("openvino") is None:
        raise ExportError(
            "OpenVINO export needs the 'openvino' Python package; install it with "
            "'pip install openvino' and run the export again"
        )
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ExportError("ONNX export needs the 'onnx' Python package; install it with pip")

    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    model = YOLO(str(model_path), task="detect")
    if fmt == "onnx":
        written = model.export(
            format="onnx", imgsz=imgsz, dynamic=True, simplify=False, opset=17, device="cpu"
        )
    else:
        written = model.export(format="openvino", imgsz=imgsz, dynamic=True, device="cpu")
    result = Path(written)
    if out_path is not None and Path(out_path).resolve() != result.resolve():
        out_path = Path(out_path)
        if out_path.exists():
            if out_path.is_dir():
                shutil.rmtree(out_path)
            else:
                out_path.unlink()
        shutil.move(str(result), str(out_path))
        result = out_path
    return result
