"""The research subcommands through the `sonomask` parser, on small real inputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import pytest

from service.research.commands import register
from service.research.phantoms import render_still


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sonomask")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_synth_then_build_dataset(tmp_path: Path) -> None:
    synth = _parse(
        [
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--count",
            "24",
            "--seed",
            "5",
            "--size",
            "160x128",
            "--videos",
            "1",
            "--frames",
            "8",
        ]
    )
    assert synth.handler(synth) == 0
    build = _parse(
        [
            "build-dataset",
            "--labelled",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "d"),
            "--seed",
            "2",
        ]
    )
    assert build.handler(build) == 0

    truth = json.loads((tmp_path / "s" / "videos" / "sweep_000.json").read_text())
    images = sorted((tmp_path / "d").glob("*/images/*.jpg"))

    assert len(truth["frames"]) == 8
    assert len(images) == 24
    assert (tmp_path / "d" / "dataset.yaml").is_file()


def test_clean_writes_images_and_masks(tmp_path: Path) -> None:
    still = render_still(77, "femur", overlays=True)
    cv2.imwrite(str(tmp_path / "in.png"), still.image_bgr)
    args = _parse(["clean", str(tmp_path / "in.png"), "--out", str(tmp_path / "out"), "--masks"])

    assert args.handler(args) == 0
    assert (tmp_path / "out" / "in.png").is_file()
    assert (tmp_path / "out" / "in_mask.png").is_file()


def test_size_option_rejects_bad_value() -> None:
    with pytest.raises(SystemExit):
        _parse(["synth", "--out", "x", "--size", "640by480"])


def test_export_rejects_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["export", "--model", str(tmp_path / "none.pt"), "--imgsz", "320"])

    assert args.handler(args) == 2
    assert "expected an existing .pt model file" in capsys.readouterr().err


SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "service" / "models" / "sonomask-demo-n.pt"
REPORT_KEYS = {
    "ap50_95",
    "ap50",
    "precision",
    "recall",
    "f1",
    "fppi",
    "conf",
    "iou",
    "images",
    "best_conf",
    "best_f1",
    "per_class",
}


@pytest.mark.slow
def test_evaluate_writes_report_and_plots(tmp_path: Path) -> None:
    synth = _parse(
        [
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--count",
            "12",
            "--seed",
            "31",
            "--negative-share",
            "0.5",
        ]
    )
    assert synth.handler(synth) == 0
    args = _parse(
        [
            "evaluate",
            "--model",
            str(SHIPPED_MODEL),
            "--data",
            str(tmp_path / "s" / "dataset.yaml"),
            "--json",
            str(tmp_path / "report.json"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )

    assert args.handler(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert report["images"] == 12
    assert report["split"] == "test"
    assert report["conf"] == json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())["conf"]
    assert report["iou"] == 0.6
    assert set(report["per_class"]) == {"transverse", "mid_sagittal"}
    assert (tmp_path / "plots" / "f1_confidence.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "precision_recall.png").stat().st_size > 1000


@pytest.mark.slow
def test_export_onnx_has_dynamic_batch(tmp_path: Path) -> None:
    import shutil

    import onnx

    model = tmp_path / "model.pt"
    shutil.copy(SHIPPED_MODEL, model)
    args = _parse(["export", "--model", str(model), "--format", "onnx", "--imgsz", "64"])

    assert args.handler(args) == 0
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param != ""


def test_export_openvino_names_missing_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    if importlib.util.find_spec("openvino") is not None:
        pytest.skip("openvino is installed, so the missing-package message cannot appear")
    args = _parse(["export", "--model", str(SHIPPED_MODEL), "--format", "openvino"])

    assert args.handler(args) == 2
    assert "'openvino' Python package" in capsys.readouterr().err


@pytest.mark.slow
def test_export_openvino_writes_model_folder(tmp_path: Path) -> None:
    import importlib.util
    import shutil

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino package is not installed")
    model = tmp_path / "model.pt"
    shutil.copy(SHIPPED_MODEL, model)
    args = _parse(["export", "--model", str(model), "--format", "openvino", "--imgsz", "64"])

    assert args.handler(args) == 0
    folder = tmp_path / "model_openvino_model"
    assert (folder / "model.xml").is_file()
    assert (folder / "model.bin").is_file()


def test_evaluate_rejects_missing_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "dataset.yaml"
    data.write_text("path: .\ntrain: images\nnames:\n  0: transverse\n  1: mid_sagittal\n")
    report = tmp_path / "r.json"
    args = _parse(
        ["evaluate", "--model", str(SHIPPED_MODEL), "--data", str(data), "--json", str(report)]
    )

    assert args.handler(args) == 2
    error = capsys.readouterr().err
    assert "split 'test' missing" in error
    assert "--split" in error
    assert not report.exists()


def test_evaluate_rejects_missing_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    args = _parse(
        ["evaluate", "--model", str(SHIPPED_MODEL), "--data", str(missing), "--json", "r.json"]
    )

    assert args.handler(args) == 2
    assert f"dataset YAML not found: {missing}" in capsys.readouterr().err
