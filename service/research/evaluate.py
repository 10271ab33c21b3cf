"""The study's detection metrics: AP[0.5:0.95], AP0.5, precision, recall, F1, FPPI and a sweep.

Ground truth and predictions are plain arrays, so the metrics can be checked on hand-made cases.
`predict_images` runs any ultralytics model file over the images of a YOLO split.

Conventions, as in the study and close to ultralytics' validator (8.4):
- AP is the mean of the precision envelope at 101 recall points (COCO's definition), per class,
  then averaged over the classes that have ground truth; AP[0.5:0.95] averages ten IoU
  thresholds. ultralytics integrates the same envelope with the trapezoid rule instead, which
  reads up to 0.005 lower (0.995 for a perfect detector).
- Precision, recall, F1 and FPPI use the detections at or above one confidence threshold,
  matched to ground truth of the same class at IoU >= 0.5.
- FPPI is the number of unmatched detections divided by the number of images, negatives included.
- `iou` is the IoU threshold of non-maximum suppression when the model runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
MATCH_IOU = 0.5
SWEEP_CONFS = np.round(np.arange(0.01, 1.0, 0.01), 2)


@dataclass
class ImageResult:
    """Ground truth and predictions of one image, boxes xyxy in pixels."""

    name: str
    gt_boxes: np.ndarray  # N×4
    gt_classes: np.ndarray  # N
    pred_boxes: np.ndarray  # M×4
    pred_classes: np.ndarray  # M
    pred_confs: np.ndarray  # M

    @staticmethod
    def make(
        name: str,
        gt: Sequence[tuple[int, Sequence[float]]],
        pred: Sequence[tuple[int, float, Sequence[float]]],
    ) -> ImageResult:
        """Build from lists: gt as (class_id, box_xyxy), pred as (class_id, conf, box_xyxy)."""
        return ImageResult(
            name,
            np.array([b for _, b in gt], dtype=np.float64).reshape(-1, 4),
            np.array([c for c, _ in gt], dtype=np.int64),
            np.array([b for _, _, b in pred], dtype=np.float64).reshape(-1, 4),
            np.array([c for c, _, _ in pred], dtype=np.int64),
            np.array([s for _, s, _ in pred], dtype=np.float64),
        )


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a) × len(b)) of xyxy boxes."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros((len(boxes_a), len(boxes_b)))
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(boxes_a[:, 2:] - boxes_a[:, :2], axis=1)
    area_b = np.prod(boxes_b[:, 2:] - boxes_b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


def match_predictions(result: ImageResult, thresholds: np.ndarray) -> np.ndarray:
    """True-positive matrix (M predictions × thresholds).

    At each threshold, pairs of the same class are matched one to one, highest IoU first.
    """
    n_pred = len(result.pred_boxes)
    correct = np.zeros((n_pred, len(thresholds)), dtype=bool)
    if n_pred == 0 or len(result.gt_boxes) == 0:
        return correct
    iou = box_iou(result.gt_boxes, result.pred_boxes)
    iou = iou * (result.gt_classes[:, None] == result.pred_classes[None, :])
    for column, threshold in enumerate(thresholds):
        gt_index, pred_index = np.nonzero(iou >= threshold)
        if len(gt_index) == 0:
            continue
        pairs = np.stack([gt_index, pred_index, iou[gt_index, pred_index]], axis=1)
        pairs = pairs[pairs[:, 2].argsort()[::-1]]
        pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
        pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
        correct[pairs[:, 1].astype(int), column] = True
    return correct


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Mean of the precision envelope at 101 recall points from 0 to 1, as COCO defines AP.

    `recall` and `precision` are cumulative over detections sorted by falling confidence. A recall
    point that is never reached counts as precision 0.
    """
    if len(recall) == 0:
        return 0.0
    envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
    samples = np.linspace(0, 1, 101)
    index = np.searchsorted(recall, samples - 1e-12, side="left")
    reached = index < len(recall)
    values = np.zeros_like(samples)
    values[reached] = envelope[index[reached]]
    return float(values.mean())


@dataclass
class ClassMetrics:
    class_id: int
    instances: int
    ap50_95: float
    ap50: float
    precision: float
    recall: float
    f1: float
    pr_curve: tuple[np.ndarray, np.ndarray] = field(repr=False)


@dataclass
class Metrics:
    """All figures of one evaluation; `as_json` gives the documented keys."""

    ap50_95: float
    ap50: float
    precision: float
    recall: float
    f1: float
    fppi: float
    fppi_negatives: float
    conf: float
    iou: float
    images: int
    negative_images: int
    instances: int
    best_conf: float
    best_f1: float
    per_class: dict[str, ClassMetrics]
    sweep_confs: np.ndarray = field(repr=False)
    sweep_f1: np.ndarray = field(repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "ap50_95": round(self.ap50_95, 4),
            "ap50": round(self.ap50, 4),
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "fppi": round(self.fppi, 5),
            "fppi_negatives": round(self.fppi_negatives, 5),
            "conf": self.conf,
            "iou": self.iou,
            "images": self.images,
            "negative_images": self.negative_images,
            "instances": self.instances,
            "best_conf": round(self.best_conf, 3),
            "best_f1": round(self.best_f1, 4),
            "per_class": {
                name: {
                    "instances": m.instances,
                    "ap50_95": round(m.ap50_95, 4),
                    "ap50": round(m.ap50, 4),
                    "precision": round(m.precision, 4),
                    "recall": round(m.recall, 4),
                    "f1": round(m.f1, 4),
                }
                for name, m in self.per_class.items()
            },
        }


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _counts_at(
    confs: np.ndarray,
    correct50: np.ndarray,
    classes: np.ndarray,
    threshold: float,
    class_id: int | None = None,
) -> tuple[int, int]:
    keep = confs >= threshold
    if class_id is not None:
        keep &= classes == class_id
    true_positives = int(correct50[keep].sum())
    return true_positives, int(keep.sum()) - true_positives


def compute_metrics(
    results: Sequence[ImageResult],
    class_names: Sequence[str],
    *,
    conf: float,
    iou: float,
) -> Metrics:
    """Compute every figure of the study from per-image ground truth and predictions.

    Predictions should come from a low confidence floor (0.001), because AP needs the whole curve.
    The threshold figures use `conf`.
    """
    if not results:
        raise ValueError("no images to evaluate")
    correct = [match_predictions(r, IOU_THRESHOLDS) for r in results]
    all_correct = np.concatenate(correct) if correct else np.zeros((0, len(IOU_THRESHOLDS)), bool)
    all_confs = np.concatenate([r.pred_confs for r in results])
    all_classes = np.concatenate([r.pred_classes for r in results])
    gt_classes = np.concatenate([r.gt_classes for r in results])
    order = np.argsort(-all_confs, kind="stable")
    all_correct, all_confs, all_classes = all_correct[order], all_confs[order], all_classes[order]
    correct50 = all_correct[:, 0]

    per_class: dict[str, ClassMetrics] = {}
    for class_id, name in enumerate(class_names):
        instances = int((gt_classes == class_id).sum())
        chosen = all_classes == class_id
        tp_cum = np.cumsum(all_correct[chosen], axis=0)
        fp_cum = np.cumsum(~all_correct[chosen], axis=0)
        aps = np.zeros(len(IOU_THRESHOLDS))
        recall50 = np.zeros(0)
        precision50 = np.zeros(0)
        if instances and chosen.any():
            recall_curve = tp_cum / instances
            precision_curve = tp_cum / (tp_cum + fp_cum)
            aps = np.array(
                [
                    average_precision(recall_curve[:, j], precision_curve[:, j])
                    for j in range(len(IOU_THRESHOLDS))
                ]
            )
            recall50, precision50 = recall_curve[:, 0], precision_curve[:, 0]
        tp, fp = _counts_at(all_confs, correct50, all_classes, conf, class_id)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / instances if instances else 0.0
        per_class[name] = ClassMetrics(
            class_id,
            instances,
            float(aps.mean()),
            float(aps[0]),
            precision,
            recall,
            _f1(precision, recall),
            (recall50, precision50),
        )

    with_gt = [m for m in per_class.values() if m.instances > 0]
    instances = len(gt_classes)
    tp, fp = _counts_at(all_confs, correct50, all_classes, conf)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / instances if instances else 0.0
    negatives = [i for i, r in enumerate(results) if len(r.gt_boxes) == 0]
    fp_on_negatives = sum(int((results[i].pred_confs >= conf).sum()) for i in negatives)

    sweep_f1 = np.zeros(len(SWEEP_CONFS))
    for k, threshold in enumerate(SWEEP_CONFS):
        tp_k, fp_k = _counts_at(all_confs, correct50, all_classes, float(threshold))
        p_k = tp_k / (tp_k + fp_k) if tp_k + fp_k else 0.0
        r_k = tp_k / instances if instances else 0.0
        sweep_f1[k] = _f1(p_k, r_k)
    best = int(np.argmax(sweep_f1))

    return Metrics(
        ap50_95=float(np.mean([m.ap50_95 for m in with_gt])) if with_gt else 0.0,
        ap50=float(np.mean([m.ap50 for m in with_gt])) if with_gt else 0.0,
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        fppi=fp / len(results),
        fppi_negatives=fp_on_negatives / len(negatives) if negatives else 0.0,
        conf=conf,
        iou=iou,
        images=len(results),
        negative_images=len(negatives),
        instances=instances,
        best_conf=float(SWEEP_CONFS[best]),
        best_f1=float(sweep_f1[best]),
        per_class=per_class,
        sweep_confs=SWEEP_CONFS.copy(),
        sweep_f1=sweep_f1,
    )


# --- Running a model over a split --------------------------------------------------------------


def split_images(data_yaml: Path, split: str) -> list[Path]:
    """List the image files of `split` in an ultralytics dataset YAML."""
    import yaml

    from service.research.dataset import list_images

    config = yaml.safe_load(Path(data_yaml).read_text())
    if split not in config:
        raise KeyError(f"split {split!r} missing from {data_yaml}; it has {sorted(config)}")
    root = Path(config.get("path") or Path(data_yaml).parent)
    if not root.is_absolute():
        root = Path(data_yaml).parent / root
    entries = config[split] if isinstance(config[split], list) else [config[split]]
    images: list[Path] = []
    for entry in entries:
        location = root / entry
        images.extend(list_images(location) if location.is_dir() else _read_list(location, root))
    if not images:
        raise FileNotFoundError(f"split {split!r} of {data_yaml} has no images")
    return images


def _read_list(list_file: Path, root: Path) -> list[Path]:
    lines = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    return [Path(line) if Path(line).is_absolute() else root / line for line in lines]


def read_yolo_labels(image: Path, size_wh: tuple[int, int]) -> list[tuple[int, list[float]]]:
    """Read the label file beside an image (`images/` -> `labels/`) as (class_id, box_xyxy px)."""
    parts = list(image.parts)
    if "images" in parts:
        index = len(parts) - 1 - parts[::-1].index("images")
        parts[index] = "labels"
    label = Path(*parts).with_suffix(".txt")
    if not label.is_file():
        return []
    width, height = size_wh
    boxes = []
    for line in label.read_text().splitlines():
        values = line.split()
        if len(values) < 5:
            continue
        class_id = int(values[0])
        cx, cy, w, h = (float(v) for v in values[1:5])
        boxes.append(
            (
                class_id,
                [
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                ],
            )
        )
    return boxes


def predict_images(
    model_path: Path,
    images: Sequence[Path],
    *,
    imgsz: int,
    iou: float,
    conf_floor: float = 0.001,
    batch: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> list[ImageResult]:
    """Run an ultralytics model file over image files; ground truth from their YOLO labels."""
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from tqdm import tqdm
    from ultralytics import YOLO

    model = YOLO(str(model_path), task="detect")
    results: list[ImageResult] = []
    bar = tqdm(total=len(images), desc="evaluate", unit="img", disable=not progress)
    for start in range(0, len(images), batch):
        chunk = [str(p) for p in images[start : start + batch]]
        outputs: list[Any] = list(
            model.predict(
                chunk,
                imgsz=imgsz,
                conf=conf_floor,
                iou=iou,
                max_det=300,
                verbose=False,
                device=device,
            )
        )
        for path, output in zip(chunk, outputs, strict=True):
            height, width = output.orig_shape
            boxes = output.boxes
            preds = [
                (int(c), float(s), list(map(float, b)))
                for b, s, c in zip(
                    boxes.xyxy.cpu().numpy(),
                    boxes.conf.cpu().numpy(),
                    boxes.cls.cpu().numpy(),
                    strict=True,
                )
            ]
            gt = read_yolo_labels(Path(path), (width, height))
            results.append(ImageResult.make(Path(path).name, gt, preds))
            bar.update(1)
    bar.close()
    return results


def model_imgsz(model_path: Path, default: int = 320) -> int:
    """Image size of a model: from its sidecar JSON, else its training arguments, else `default`."""
    sidecar = Path(model_path).with_suffix(".json")
    if sidecar.is_file():
        return int(json.loads(sidecar.read_text()).get("imgsz", default))
    if Path(model_path).suffix == ".pt":
        import torch

        checkpoint = torch.load(model_path, map_location="cpu", weights_only=False)
        value = (checkpoint.get("train_args") or {}).get("imgsz", default)
        return int(max(value) if isinstance(value, list | tuple) else value)
    return default


def model_conf(model_path: Path) -> float:
    """Return the confidence threshold a model ships with: its sidecar value, else the study's."""
    from service.detection.loading import STUDY_CONF, ModelCard

    conf = ModelCard.read(Path(model_path)).conf
    return STUDY_CONF if conf is None else float(conf)


def write_plots(metrics: Metrics, out_dir: Path) -> list[Path]:
    """Write the F1-confidence curve and the per-class PR curve (IoU 0.5) as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    axis.plot(metrics.sweep_confs, metrics.sweep_f1, color="tab:blue")
    axis.axvline(
        metrics.best_conf,
        color="tab:red",
        linestyle="--",
        label=f"best F1 {metrics.best_f1:.3f} at {metrics.best_conf:.2f}",
    )
    axis.set(xlabel="confidence threshold", ylabel="F1 (IoU 0.5)", xlim=(0, 1), ylim=(0, 1.02))
    axis.legend(loc="lower left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(out_dir / "f1_confidence.png")
    figure.savefig(paths[-1])
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for name, class_metrics in metrics.per_class.items():
        recall, precision = class_metrics.pr_curve
        if len(recall):
            axis.plot(recall, precision, label=f"{name} AP0.5 {class_metrics.ap50:.3f}")
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    axis.legend(loc="lower left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(out_dir / "precision_recall.png")
    figure.savefig(paths[-1])
    plt.close(figure)
    return paths
