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
