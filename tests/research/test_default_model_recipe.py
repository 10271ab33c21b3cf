"""Training stages of the shipped model: each starts from the previous one, on its own phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.research import default_model


def test_stage_config_starts_from_previous_best(tmp_path: Path) -> None:
    stage2_best = tmp_path / "runs" / "stage2" / "weights" / "best.pt"

    config = default_model.stage_config(tmp_path, 3, stage2_best)

    assert config.model == str(stage2_best)
    assert config.data == tmp_path / "data3" / "dataset.yaml"
    assert config.name == "stage3"
    assert config.imgsz == default_model.IMGSZ
    assert config.warmup_epochs == 0.0
    assert config.lr0 < default_model.train_config(tmp_path).lr0


def test_run_training_rejects_missing_previous_stage(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="stage 3 starts from stage 2"):
        default_model.run_training(tmp_path, stage=3)


def test_stage_seeds_differ_from_validation_and_test() -> None:
    seeds = list(default_model.STAGE_TRAIN_SEEDS.values())
    held_out = {default_model.VAL_SEED, default_model.TEST_SEED}

    assert len(set(seeds)) == len(seeds)
    assert not held_out & set(seeds)
