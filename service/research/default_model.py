"""Every step that produces the shipped demonstration model, so that one script reproduces it.

`python -m service.research.default_model all --work DIR --hc18 DIR --real DIR` builds the data,
trains in three stages, picks the confidence threshold on the validation split, exports ONNX,
writes the sidecar JSON, and evaluates on a fresh phantom test set and on real negative images
the model never saw.
Each step is also a subcommand, so an interrupted run can resume from the step that failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from service.research.anatomy import CLASS_NAMES
from service.research.dataset import copy_negative_images, hold_out_every, list_images
from service.research.phantoms import STUDY_NEGATIVE_SHARE, synthesize_dataset, write_dataset_yaml
from service.research.train import TrainConfig

MODEL_NAME = "sonomask-demo-n"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

TRAIN_SEED = 1001
# The second stage fine-tunes the first stage's best weights on new phantoms from this seed, so
# the model meets 2,000 different training stills in all.
STAGE2_TRAIN_SEED = 1004
# The third stage continues from the second stage's best weights, again on new phantoms.
STAGE3_TRAIN_SEED = 1005
STAGE_TRAIN_SEEDS = {1: TRAIN_SEED, 2: STAGE2_TRAIN_SEED, 3: STAGE3_TRAIN_SEED}
TRAIN_COUNT = 1000
STAGE3_TRAIN_COUNT = 1500
# Half the training images are positives, so the small model meets enough targets in few epochs.
# The validation and test sets keep the study's share of negatives.
TRAIN_NEGATIVE_SHARE = 0.5
VAL_SEED = 2002
VAL_COUNT = 300
TEST_SEED = 3003
TEST_COUNT = 500
HC18_HOLD_OUT_EVERY = 3  # every third hc18 image (sorted by name, from the first) is test-only
NMS_IOU = 0.6
IMGSZ = 320


def train_config(work: Path) -> TrainConfig:
    """Return the exact settings of the first training stage: from scratch, 16 epochs."""
    return TrainConfig(
        data=work / "data" / "dataset.yaml",
        model="yolov8n.yaml",
        epochs=16,
        imgsz=IMGSZ,
        batch=16,
        seed=0,
        workers=0,
        device="cpu",
        project=work / "runs",
        name="default",
        close_mosaic=4,
    )


def stage_config(work: Path, stage: int, previous_best: Path) -> TrainConfig:
    """Return the settings of stage 2 (16 epochs) or 3 (38 epochs): training continues from the
    previous stage's best weights at half the first stage's learning rate."""
    first = train_config(work)
    return dataclasses.replace(
        first,
        data=work / _data_folder(stage) / "dataset.yaml",
        model=str(previous_best),
        epochs=16 if stage == 2 else 38,
        name=f"stage{stage}",
        lr0=first.lr0 / 2,
        warmup_epochs=0.0,
        close_mosaic=4 if stage == 2 else 8,
    )


def _data_folder(stage: int) -> str:
    return "data" if stage == 1 else f"data{stage}"


def _run_folder(stage: int) -> str:
    return "default" if stage == 1 else f"stage{stage}"


def prepare_data(work: Path, hc18: Path, stage: int = 1) -> None:
    """Write training and validation phantoms and add the training part of hc18 as negatives."""
    root = work / _data_folder(stage)
    seed = STAGE_TRAIN_SEEDS[stage]
    if root.exists():
        shutil.rmtree(root)
    count = STAGE3_TRAIN_COUNT if stage == 3 else TRAIN_COUNT
    synthesize_dataset(root / "train", count, seed, negative_share=TRAIN_NEGATIVE_SHARE)
    synthesize_dataset(root / "val", VAL_COUNT, VAL_SEED, negative_share=STUDY_NEGATIVE_SHARE)
    hc18_training, _ = hold_out_every(list_images(hc18), HC18_HOLD_OUT_EVERY)
    copy_negative_images(hc18_training, root / "train", prefix="hc18_")
    write_dataset_yaml(root / "dataset.yaml", root, {"train": "train/images", "val": "val/images"})


def prepare_test(work: Path) -> Path:
    """Write the phantom test set from a seed that training and validation never used."""
    root = work / "test"
    if root.exists():
        shutil.rmtree(root)
    synthesize_dataset(root, TEST_COUNT, TEST_SEED, negative_share=STUDY_NEGATIVE_SHARE)
    return root / "dataset.yaml"


def run_training(work: Path, stage: int = 1) -> Path:
    from service.research.train import train

    if stage == 1:
        return train(train_config(work))
    previous_best = work / "runs" / _run_folder(stage - 1) / "weights" / "best.pt"
    if not previous_best.is_file():
        previous_step = "train" if stage == 2 else f"train{stage - 1}"
        raise FileNotFoundError(
            f"stage {stage} starts from stage {stage - 1}'s weights, not found: {previous_best}; "
            f"run the {previous_step} step first"
        )
    return train(stage_config(work, stage, previous_best))


def install_model(best_pt: Path) -> Path:
    """Copy trained weights (optimizer state stripped) to the models folder."""
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics.utils.torch_utils import strip_optimizer

    target = MODELS_DIR / f"{MODEL_NAME}.pt"
    shutil.copy2(best_pt, target)
    strip_optimizer(str(target))
    return target


def choose_threshold(work: Path, model: Path) -> dict[str, Any]:
    """Sweep confidence on the validation split and write the sidecar JSON with the best-F1 one."""
    from service.research.evaluate import compute_metrics, predict_images, split_images

    images = split_images(work / _data_folder(3) / "dataset.yaml", "val")
    results = predict_images(model, images, imgsz=IMGSZ, iou=NMS_IOU)
    metrics = compute_metrics(results, CLASS_NAMES, conf=0.5, iou=NMS_IOU)
    sidecar = {
        "imgsz": IMGSZ,
        "conf": round(metrics.best_conf, 3),
        "iou": NMS_IOU,
        "class_names": list(CLASS_NAMES),
    }
    (MODELS_DIR / f"{MODEL_NAME}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return {"val_best_f1": metrics.best_f1, **sidecar}


def export_onnx(model: Path) -> Path:
    from service.research.export import export_model

    return export_model(model, "onnx", IMGSZ, MODELS_DIR / f"{MODEL_NAME}.onnx")


def real_negative_images(hc18: Path, real_root: Path, frames_dir: Path) -> list[Path]:
    """Held-out hc18 images, the real stills, and every frame of the real videos as PNG files."""
    import av
    import cv2

    _, held_out = hold_out_every(list_images(hc18), HC18_HOLD_OUT_EVERY)
    images = list(held_out)
    images += list_images(real_root / "stills")
    frames_dir.mkdir(parents=True, exist_ok=True)
    for video in sorted((real_root / "video").iterdir()):
        if video.suffix.lower() not in (".mp4", ".mov"):
            continue
        with av.open(str(video)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                path = frames_dir / f"{video.stem}_{index:04d}.png"
                cv2.imwrite(str(path), frame.to_ndarray(format="bgr24"))
                images.append(path)
    return images


def evaluate_all(work: Path, model: Path, hc18: Path, real_root: Path) -> dict[str, Any]:
    """Metrics on the fresh phantom test set and false positives on unseen real negatives."""
    from service.research.evaluate import compute_metrics, predict_images, split_images

    sidecar = json.loads((MODELS_DIR / f"{MODEL_NAME}.json").read_text())
    conf = float(sidecar["conf"])
    test_yaml = prepare_test(work)
    test_results = predict_images(model, split_images(test_yaml, "val"), imgsz=IMGSZ, iou=NMS_IOU)
    test_metrics = compute_metrics(test_results, CLASS_NAMES, conf=conf, iou=NMS_IOU)

    frames_dir = work / "real-frames"
    if frames_dir.exists():
        shutil.rmtree(frames_dir)
    negatives = real_negative_images(hc18, real_root, frames_dir)
    real_results = predict_images(model, negatives, imgsz=IMGSZ, iou=NMS_IOU)
    false_by_source: dict[str, int] = {}
    images_by_source: dict[str, int] = {}
    for path, result in zip(negatives, real_results, strict=True):
        source = _source_of(path, frames_dir)
        images_by_source[source] = images_by_source.get(source, 0) + 1
        false_by_source[source] = false_by_source.get(source, 0) + int(
            (result.pred_confs >= conf).sum()
        )
    total_false = sum(false_by_source.values())
    report = {
        "model": str(model),
        "phantom_test": test_metrics.as_json(),
        "real_negatives": {
            "images": len(negatives),
            "false_positives": total_false,
            "fppi": round(total_false / len(negatives), 5),
            "conf": conf,
            "by_source": {
                source: {
                    "images": images_by_source[source],
                    "false_positives": false_by_source[source],
                }
                for source in sorted(images_by_source)
            },
        },
    }
    (work / "evaluation.json").write_text(json.dumps(report, indent=2))
    return report


def _source_of(path: Path, frames_dir: Path) -> str:
    if path.parent == frames_dir:
        return "video/" + path.stem.rsplit("_", 1)[0]
    return f"{path.parent.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "step",
        choices=(
            "all",
            "data",
            "train",
            "data2",
            "train2",
            "data3",
            "train3",
            "install",
            "threshold",
            "export",
            "evaluate",
        ),
    )
    parser.add_argument("--work", type=Path, required=True, help="folder for data and runs")
    parser.add_argument("--hc18", type=Path, required=True, help="folder of hc18 head images")
    parser.add_argument("--real", type=Path, help="real data root (stills/, video/) for evaluate")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    best = work / "runs" / _run_folder(3) / "weights" / "best.pt"
    installed = MODELS_DIR / f"{MODEL_NAME}.pt"

    if args.step in ("all", "data"):
        prepare_data(work, args.hc18)
    if args.step in ("all", "train"):
        run_training(work)
    if args.step in ("all", "data2"):
        prepare_data(work, args.hc18, stage=2)
    if args.step in ("all", "train2"):
        run_training(work, stage=2)
    if args.step in ("all", "data3"):
        prepare_data(work, args.hc18, stage=3)
    if args.step in ("all", "train3"):
        best = run_training(work, stage=3)
    if args.step in ("all", "install"):
        print(f"installed {install_model(best)}")
    if args.step in ("all", "threshold"):
        print(json.dumps(choose_threshold(work, installed)))
    if args.step in ("all", "export"):
        print(f"exported {export_onnx(installed)}")
    if args.step in ("all", "evaluate"):
        if args.real is None:
            print("evaluate needs --real (the folder with stills/ and video/)", file=sys.stderr)
            return 2
        print(json.dumps(evaluate_all(work, installed, args.hc18, args.real), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
