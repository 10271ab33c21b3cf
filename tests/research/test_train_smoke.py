"""One short training run end to end, offline, from the nano model config."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.research.phantoms import synthesize_dataset
from service.research.train import TrainConfig, train


@pytest.mark.slow
def test_one_epoch_writes_weights(tmp_path: Path) -> None:
    synthesize_dataset(
        tmp_path / "data", 16, seed=8, size_wh=(128, 96), negative_share=0.5, progress=False
    )
    config = TrainConfig(
        data=tmp_path / "data" / "dataset.yaml",
        epochs=1,
        imgsz=64,
        batch=8,
        project=tmp_path / "runs",
        name="smoke",
        close_mosaic=0,
    )

    best = train(config)

    assert best.is_file()
    assert best.stat().st_size > 100_000


def test_train_config_rejects_bad_imgsz(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(data=tmp_path / "d.yaml", imgsz=100)


def test_train_rejects_missing_weights(tmp_path: Path) -> None:
    data = tmp_path / "d.yaml"
    data.write_text("path: .\n")
    with pytest.raises(ValueError, match="existing local weights file"):
        train(TrainConfig(data=data, model="yolov8n.pt"))
