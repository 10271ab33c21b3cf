"""The ONNX Runtime and OpenVINO detectors, and how `load_detector` picks a backend."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from service.config import Backend, Settings
from service.detection.loading import load_detector
from service.detection.model import ModelLoadError, UltralyticsDetector
from service.detection.runtimes import OnnxRuntimeDetector, OpenVinoDetector

REPO_ROOT = Path(__file__).resolve().parents[2]


def _phantom_frames(count: int) -> list[np.ndarray]:
    from service.research.phantoms import render_still

    planes = ["transverse", "mid_sagittal", "head", "transverse"]
    return [render_still(50 + seed, planes[seed % 4]).image_bgr for seed in range(count)]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


@pytest.mark.parametrize("runtime", [OnnxRuntimeDetector, OpenVinoDetector])
def test_lean_detector_matches_ultralytics(default_model_path: Path, runtime: type) -> None:
    onnx_path = default_model_path.with_suffix(".onnx")
    if not onnx_path.is_file():
        pytest.skip(f"the shipped model has no ONNX export at {onnx_path}")
    # A low threshold, so that there are many boxes to compare.
    reference = UltralyticsDetector(default_model_path, device="cpu", conf=0.05, iou=0.6)
    lean = runtime(onnx_path, imgsz=reference.info.imgsz, conf=0.05, iou=0.6)
    frames = _phantom_frames(6)

    found = 0
    for frame in frames:
        (expected,) = reference.predict([frame])
        (actual,) = lean.predict([frame])
        assert len(actual) == len(expected)
        for ours, theirs in zip(actual, expected, strict=True):
            assert ours.class_id == theirs.class_id
            assert abs(ours.confidence - theirs.confidence) < 0.01
            assert _iou(ours.box_xyxy, theirs.box_xyxy) > 0.98
        found += len(expected)
    assert found > 0, "the shipped model found nothing on phantom stills at confidence 0.05"


def test_batch_gives_same_boxes_as_single_frames(default_model_path: Path) -> None:
    onnx_path = default_model_path.with_suffix(".onnx")
    if not onnx_path.is_file():
        pytest.skip(f"the shipped model has no ONNX export at {onnx_path}")
    detector = OnnxRuntimeDetector(onnx_path, conf=0.05)
    frames = _phantom_frames(4)
    batched = detector.predict(frames)
    for frame, in_batch in zip(frames, batched, strict=True):
        (alone,) = detector.predict([frame])
        assert [d.class_id for d in in_batch] == [d.class_id for d in alone]
        for ours, theirs in zip(in_batch, alone, strict=True):
            assert _iou(ours.box_xyxy, theirs.box_xyxy) > 0.98


def test_fixed_batch_export_runs_any_batch(fixed_batch_onnx: Path) -> None:
    detector = OnnxRuntimeDetector(fixed_batch_onnx)
    frames = [np.full((480, 640, 3), value, np.uint8) for value in (30, 90, 150)]
    assert detector.info.imgsz == 320
    assert len(detector.predict(frames)) == 3


def test_export_metadata_is_read(untrained_with_onnx: Path) -> None:
    detector = OnnxRuntimeDetector(untrained_with_onnx.with_suffix(".onnx"))
    assert detector.info.class_names == ("transverse", "mid_sagittal")
    assert detector.info.imgsz == 320
    assert detector.info.backend == "onnx"


def test_cuda_without_cuda_provider_is_rejected(untrained_with_onnx: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
        OnnxRuntimeDetector(untrained_with_onnx.with_suffix(".onnx"), device="cuda:0")


def test_openvino_rejects_gpu_device(untrained_with_onnx: Path) -> None:
    with pytest.raises(ModelLoadError, match="CPU only"):
        OpenVinoDetector(untrained_with_onnx.with_suffix(".onnx"), device="cuda:0")


def test_auto_on_cpu_prefers_an_exported_runtime(untrained_with_onnx: Path) -> None:
    detector = load_detector(Settings(model_path=untrained_with_onnx, device="cpu"))
    assert detector.info.backend in {"onnx", "openvino"}


def test_auto_without_export_uses_torch(untrained_model_path: Path, tmp_path: Path) -> None:
    weights = tmp_path / "alone.pt"
    shutil.copy(untrained_model_path, weights)
    detector = load_detector(Settings(model_path=weights, device="cpu"))
    assert detector.info.backend == "torch"


@pytest.mark.parametrize("backend", [Backend.ONNX, Backend.OPENVINO, Backend.TORCH])
def test_each_backend_loads_from_pt_path(untrained_with_onnx: Path, backend: Backend) -> None:
    settings = Settings(model_path=untrained_with_onnx, backend=backend, device="cpu")
    detector = load_detector(settings)
    assert detector.info.backend == backend.value
    assert detector.predict([np.zeros((240, 320, 3), np.uint8)]) == [[]]


def test_onnx_path_with_auto_does_not_need_pt(untrained_with_onnx: Path, tmp_path: Path) -> None:
    onnx_only = tmp_path / "only.onnx"
    shutil.copy(untrained_with_onnx.with_suffix(".onnx"), onnx_only)
    detector = load_detector(Settings(model_path=onnx_only, device="cpu"))
    assert detector.info.backend in {"onnx", "openvino"}


def test_missing_export_names_the_file(untrained_model_path: Path, tmp_path: Path) -> None:
    weights = tmp_path / "alone.pt"
    shutil.copy(untrained_model_path, weights)
    with pytest.raises(ModelLoadError, match=r"alone\.onnx"):
        load_detector(Settings(model_path=weights, backend=Backend.ONNX, device="cpu"))


def test_backend_that_cannot_run_file_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "model_openvino_model"
    folder.mkdir()
    settings = Settings(model_path=folder, backend=Backend.ONNX, device="cpu")
    with pytest.raises(ModelLoadError, match="SONOMASK_BACKEND=openvino"):
        load_detector(settings)


def test_onnx_service_never_imports_torch(untrained_with_onnx: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from service.config import Settings
        from service.app import create_app
        from service.detection.loading import load_detector

        create_app(Settings(model_path={str(untrained_with_onnx)!r}))
        detector = load_detector(Settings(model_path={str(untrained_with_onnx)!r}))
        detector.predict([np.zeros((480, 640, 3), np.uint8)])
        print(detector.info.backend, "torch" in sys.modules, "ultralytics" in sys.modules)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    backend, torch_loaded, ultralytics_loaded = completed.stdout.split()
    assert backend in {"onnx", "openvino"}
    assert torch_loaded == "False"
    assert ultralytics_loaded == "False"
