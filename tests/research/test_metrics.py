"""The study's metrics on hand-made cases, and AP against ultralytics' own validator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from service.research.evaluate import (
    ImageResult,
    average_precision,
    box_iou,
    compute_metrics,
    predict_images,
    split_images,
)
from service.research.phantoms import synthesize_dataset

CLASSES = ("transverse", "mid_sagittal")
REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = REPO_ROOT / "service" / "models" / "sonomask-demo-n.pt"


def _positive(name: str, class_id: int, box: list[float]) -> ImageResult:
    return ImageResult.make(name, [(class_id, box)], [(class_id, 0.9, box)])


def test_perfect_predictions() -> None:
    results = [
        _positive("a", 0, [10, 10, 50, 50]),
        _positive("b", 1, [100, 80, 140, 120]),
        ImageResult.make("c", [], []),
    ]
    metrics = compute_metrics(results, CLASSES, conf=0.5, iou=0.6)

    assert metrics.ap50_95 == pytest.approx(1.0)
    assert metrics.ap50 == pytest.approx(1.0)
    assert metrics.precision == 1.0
    assert metrics.recall == 1.0
    assert metrics.f1 == 1.0
    assert metrics.fppi == 0.0
    assert metrics.images == 3
    assert metrics.negative_images == 1


def test_one_false_box_in_ten_negatives() -> None:
    results = [ImageResult.make(f"n{i}", [], []) for i in range(9)]
    results.append(ImageResult.make("n9", [], [(0, 0.8, [5, 5, 40, 40])]))
    metrics = compute_metrics(results, CLASSES, conf=0.5, iou=0.6)

    assert metrics.fppi == pytest.approx(0.1)
    assert metrics.fppi_negatives == pytest.approx(0.1)
    assert metrics.precision == 0.0


def test_false_box_below_threshold_ignored() -> None:
    results = [ImageResult.make("n", [], [(0, 0.2, [5, 5, 40, 40])])]
    metrics = compute_metrics(results, CLASSES, conf=0.5, iou=0.6)

    assert metrics.fppi == 0.0


def test_wrong_class_is_false_positive_and_miss() -> None:
    results = [ImageResult.make("a", [(0, [10, 10, 50, 50])], [(1, 0.9, [10, 10, 50, 50])])]
    metrics = compute_metrics(results, CLASSES, conf=0.5, iou=0.6)

    assert metrics.recall == 0.0
    assert metrics.fppi == 1.0
    assert metrics.per_class["transverse"].ap50 == 0.0


def test_loose_box_counts_at_low_iou_only() -> None:
    # IoU of these boxes is 0.64: a hit at 0.5..0.6, a miss from 0.65 up.
    gt = [10.0, 10.0, 60.0, 60.0]
    pred = [10.0, 10.0, 50.0, 50.0]
    results = [ImageResult.make("a", [(0, gt)], [(0, 0.9, pred)])]
    metrics = compute_metrics(results, CLASSES, conf=0.5, iou=0.6)

    assert box_iou(np.array([gt]), np.array([pred]))[0, 0] == pytest.approx(0.64)
    assert metrics.ap50 == pytest.approx(1.0)
    assert metrics.ap50_95 == pytest.approx(0.3)
    assert metrics.f1 == 1.0


def test_sweep_finds_best_threshold() -> None:
    # A true box at 0.7 and a false one at 0.4: F1 is best between 0.41 and 0.70.
    results = [
        ImageResult.make("a", [(0, [10, 10, 50, 50])], [(0, 0.7, [10, 10, 50, 50])]),
        ImageResult.make("b", [], [(0, 0.4, [10, 10, 50, 50])]),
    ]
    metrics = compute_metrics(results, CLASSES, conf=0.3, iou=0.6)

    assert metrics.f1 == pytest.approx(2 / 3)
    assert metrics.best_f1 == pytest.approx(1.0)
    assert 0.4 < metrics.best_conf <= 0.7


def test_average_precision_of_half_recall() -> None:
    assert average_precision(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_ap_matches_ultralytics_validator(tmp_path: Path) -> None:
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"shipped model missing at {SHIPPED_MODEL}")
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    synthesize_dataset(tmp_path, 48, seed=4242, negative_share=0.3, progress=False)
    data = tmp_path / "dataset.yaml"
    images = split_images(data, "val")
    results = predict_images(SHIPPED_MODEL, images, imgsz=320, iou=0.7, progress=False)
    ours = compute_metrics(results, CLASSES, conf=0.25, iou=0.7)
    theirs = YOLO(str(SHIPPED_MODEL)).val(
        data=str(data),
        imgsz=320,
        batch=8,
        conf=0.001,
        iou=0.7,
        rect=False,
        plots=False,
        verbose=False,
        device="cpu",
        workers=0,
        project=str(tmp_path / "val"),
    )

    assert ours.ap50_95 == pytest.approx(theirs.box.map, abs=0.01)
    assert ours.ap50 == pytest.approx(theirs.box.map50, abs=0.01)
