"""The research subcommands of `sonomask`: synth, build-dataset, clean, train, evaluate, export.

Heavy modules (ultralytics, torch, matplotlib) load inside the handlers so `sonomask --help`
stays fast. Each handler returns the process exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _size_wh(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a size as WxH, e.g. 640x480, got {text!r}"
        ) from exc
    if width < 64 or height < 64:
        raise argparse.ArgumentTypeError(f"size must be at least 64x64, got {text!r}")
    return width, height


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share within 0..1, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the research subcommands to the `sonomask` command line."""
    _register_synth(subparsers)
    _register_build_dataset(subparsers)
    _register_clean(subparsers)
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_export(subparsers)


# --- synth --------------------------------------------------------------------------------------


def _register_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate labelled ultrasound phantoms (stills and probe-sweep videos)",
        description="Write phantom stills as a YOLO folder (images/, labels/, manifest.csv, "
        "dataset.yaml) and, with --videos, mp4 sweeps with per-frame ground truth JSON.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--count", type=int, default=100, help="number of stills")
    parser.add_argument("--seed", type=int, default=0, help="seed; equal seeds give equal output")
    parser.add_argument("--videos", type=int, default=0, help="number of sweep videos")
    parser.add_argument("--frames", type=int, default=150, help="frames per video")
    parser.add_argument("--fps", type=float, default=25.0, help="video frame rate in Hz")
    parser.add_argument("--size", type=_size_wh, default=(640, 480), help="image size WxH in px")
    parser.add_argument(
        "--negative-share",
        type=_share,
        default=0.72,
        help="share of stills without a target (0..1); the study's data had 0.72",
    )
    parser.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from service.research.phantoms import synthesize_dataset, write_video

    started = time.perf_counter()
    summary = synthesize_dataset(
        args.out, args.count, args.seed, size_wh=args.size, negative_share=args.negative_share
    )
    elapsed_s = time.perf_counter() - started
    print(
        f"wrote {summary.images} stills of {summary.patients} patients to {args.out} "
        f"in {elapsed_s:.1f} s ({summary.images / elapsed_s:.1f} images/s)"
    )
    for index in range(args.videos):
        path = write_video(
            args.out / "videos" / f"sweep_{index:03d}.mp4",
            seed=args.seed * 1000 + index,
            n_frames=args.frames,
            size_wh=args.size,
            fps=args.fps,
        )
        print(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


# --- build-dataset ------------------------------------------------------------------------------


def _register_build_dataset(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-dataset",
        help="split labelled and negative folders into train/val/test by patient",
        description="Copy images into train/val/test (70/15/15 by default). A patient never "
        "spans two splits, and each plane, negative planes included, is spread over the splits "
        "in proportion. Patients and planes come from manifest.csv when a folder has one.",
    )
    parser.add_argument(
        "--labelled",
        type=Path,
        nargs="+",
        required=True,
        help="YOLO folders with images/ and labels/",
    )
    parser.add_argument(
        "--negatives",
        type=Path,
        nargs="*",
        default=[],
        help="folders of images with no target; each file is its own patient "
        "unless a manifest.csv says otherwise",
    )
    parser.add_argument(
        "--negative-plane",
        default="negative",
        help="plane name given to negative images that have no manifest row",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions, summing to 1",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient order")
    parser.set_defaults(handler=run_build_dataset)


def run_build_dataset(args: argparse.Namespace) -> int:
    from service.research.dataset import build_dataset

    summary = build_dataset(
        args.out,
        args.labelled,
        args.negatives,
        fractions=tuple(args.split),
        seed=args.seed,
        negative_plane=args.negative_plane,
    )
    for split, counts in summary.counts.items():
        planes = ", ".join(f"{plane} {n}" for plane, n in sorted(counts.items()))
        print(
            f"{split}: {sum(counts.values())} images, {summary.patients[split]} patients ({planes})"
        )
    print(f"wrote {args.out / 'dataset.yaml'}")
    return 0


# --- clean --------------------------------------------------------------------------------------


def _register_clean(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "clean",
        help="remove burned-in text and markers from images by inpainting",
        description="Top-hat (7x7), Otsu and hysteresis thresholds, 3x3 dilation and OpenCV "
        "inpainting, as the study preprocessed its training images.",
    )
    parser.add_argument("input", type=Path, help="an image file or a folder of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--masks", action="store_true", help="also write each removed-pixel mask")
    parser.set_defaults(handler=run_clean)


def run_clean(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from service.research.clean import clean_image
    from service.research.dataset import list_images

    files = [args.input] if args.input.is_file() else list_images(args.input)
    if not files:
        print(f"no images found at {args.input}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for file in tqdm(files, desc="clean", unit="img"):
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            print(f"cannot decode {file}; skipped", file=sys.stderr)
            failed += 1
            continue
        result = clean_image(image)
        cv2.imwrite(str(args.out / file.name), result.image_bgr)
        if args.masks:
            cv2.imwrite(str(args.out / f"{file.stem}_mask.png"), result.mask)
    print(f"cleaned {len(files) - failed} images into {args.out}")
    return 1 if failed else 0


# --- train --------------------------------------------------------------------------------------


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    from service.research.train import DEFAULT_MODEL_CONFIG, STUDY_IMGSZ, STUDY_MODEL_CONFIG

    parser = subparsers.add_parser(
        "train",
        help="train a detector from scratch with ultralytics (offline)",
        description="Train from a model .yaml with the study's augmentations and a one-cycle "
        f"learning rate. --model {STUDY_MODEL_CONFIG} builds the study's network size.",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset YAML")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_CONFIG,
        help=f"model config .yaml (default {DEFAULT_MODEL_CONFIG}; "
        f"{STUDY_MODEL_CONFIG} for the study's network)",
    )
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--imgsz", type=int, default=STUDY_IMGSZ, help="input size in px")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0")
    parser.add_argument(
        "--project", type=Path, default=Path("runs/sonomask"), help="folder for training runs"
    )
    parser.add_argument("--name", default="train", help="run name inside --project")
    parser.add_argument(
        "--close-mosaic", type=int, default=4, help="last epochs trained without mosaic"
    )
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from service.research.train import TrainConfig, train

    config = TrainConfig(
        data=args.data,
        model=args.model,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        project=args.project,
        name=args.name,
        close_mosaic=args.close_mosaic,
    )
    best = train(config)
    print(f"best weights: {best}")
    return 0


# --- evaluate -----------------------------------------------------------------------------------


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compute AP, precision, recall, F1, FPPI and a confidence sweep",
        description="Run a model over a dataset split and report the study's metrics. "
        "Precision, recall, F1 and FPPI count detections at or above --conf, matched at IoU 0.5.",
    )
    parser.add_argument("--model", type=Path, required=True, help="model file (.pt or .onnx)")
    parser.add_argument("--data", type=Path, required=True, help="dataset YAML")
    parser.add_argument("--split", default="test", help="split name in the YAML")
    parser.add_argument(
        "--conf",
        type=float,
        help="confidence threshold (default: the model's sidecar JSON, else the study's 0.318)",
    )
    parser.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument(
        "--imgsz",
        type=int,
        default=0,
        help="input size in px; 0 reads it from the model or its sidecar JSON",
    )
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0")
    parser.add_argument("--json", type=Path, required=True, help="where to write the metrics")
    parser.add_argument("--plots", type=Path, help="folder for the F1 and PR curve PNGs")
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from service.research.anatomy import CLASS_NAMES
    from service.research.evaluate import (
        compute_metrics,
        model_conf,
        model_imgsz,
        predict_images,
        split_images,
        write_plots,
    )

    try:
        images = split_images(args.data, args.split)
    except FileNotFoundError as exc:
        print(f"dataset YAML not found: {exc.filename}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"{exc.args[0]}; pass one of them with --split", file=sys.stderr)
        return 2
    imgsz = args.imgsz or model_imgsz(args.model)
    conf = args.conf if args.conf is not None else model_conf(args.model)
    results = predict_images(args.model, images, imgsz=imgsz, iou=args.iou, device=args.device)
    metrics = compute_metrics(results, CLASS_NAMES, conf=conf, iou=args.iou)
    report = metrics.as_json()
    report["imgsz"] = imgsz
    report["model"] = str(args.model)
    report["split"] = args.split
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    if args.plots:
        for path in write_plots(metrics, args.plots):
            print(f"wrote {path}")
    print(
        f"{args.split}: {metrics.images} images, AP50-95 {metrics.ap50_95:.3f} AP50 "
        f"{metrics.ap50:.3f} P {metrics.precision:.3f} R {metrics.recall:.3f} F1 {metrics.f1:.3f} "
        f"FPPI {metrics.fppi:.4f} at conf {conf}; best F1 {metrics.best_f1:.3f} at "
        f"{metrics.best_conf:.2f}"
    )
    print(f"wrote {args.json}")
    return 0


# --- export -------------------------------------------------------------------------------------


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a .pt model to ONNX (dynamic batch) or OpenVINO",
    )
    parser.add_argument("--model", type=Path, required=True, help=".pt model file")
    parser.add_argument("--format", choices=("onnx", "openvino"), default="onnx")
    parser.add_argument(
        "--imgsz",
        type=int,
        default=0,
        help="input size in px; 0 reads it from the model or its sidecar JSON",
    )
    parser.add_argument("--out", type=Path, help="output path (default: beside the model)")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from service.research.evaluate import model_imgsz
    from service.research.export import ExportError, export_model

    imgsz = args.imgsz or model_imgsz(args.model)
    try:
        written = export_model(args.model, args.format, imgsz, args.out)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0
