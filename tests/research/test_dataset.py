"""Patient-grouped splits and the synth folder they read."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from service.research.dataset import Item, assign_splits, build_dataset, hold_out_every
from service.research.phantoms import synthesize_dataset


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize_dataset(out, 90, seed=21, size_wh=(160, 128), progress=False)
    return out


@pytest.fixture(scope="module")
def negative_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("negatives")
    rng = np.random.default_rng(0)
    for index in range(20):
        image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        cv2.imwrite(str(out / f"real_{index:02d}.png"), image)
    return out


def test_synth_writes_labels_and_manifest(synth_folder: Path) -> None:
    with (synth_folder / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    config = yaml.safe_load((synth_folder / "dataset.yaml").read_text())

    assert len(rows) == 90
    assert config["names"] == {0: "transverse", 1: "mid_sagittal"}
    patients = Counter(row["patient_id"] for row in rows)
    assert len(patients) < 90
    for row in rows:
        label = (synth_folder / row["file"]).with_suffix(".txt")
        label = Path(str(label).replace("/images/", "/labels/"))
        lines = label.read_text().split("\n")[:-1]
        assert len(lines) == (1 if int(row["class_id"]) >= 0 else 0)
        for line in lines:
            class_id, _, _, w, h = line.split()
            assert int(class_id) == int(row["class_id"])
            assert 0 < float(w) <= 1
            assert 0 < float(h) <= 1
            # Square in pixels: width share × 160 equals height share × 128.
            assert float(w) * 160 == pytest.approx(float(h) * 128, abs=0.02)


def test_no_patient_in_two_splits(
    synth_folder: Path, negative_folder: Path, tmp_path: Path
) -> None:
    summary = build_dataset(tmp_path, [synth_folder], [negative_folder], seed=3)
    with (tmp_path / "splits.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits_of[row["patient_id"]].add(row["split"])

    assert len(rows) == 110
    assert all(len(splits) == 1 for splits in splits_of.values())
    assert sum(sum(c.values()) for c in summary.counts.values()) == 110
    assert (tmp_path / "test" / "images").is_dir()
    config = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    assert (config["train"], config["val"], config["test"]) == (
        "train/images",
        "val/images",
        "test/images",
    )


def test_negatives_spread_over_splits(negative_folder: Path, tmp_path: Path) -> None:
    summary = build_dataset(tmp_path, [], [negative_folder], seed=1, negative_plane="real")

    assert summary.counts["train"]["real"] == 14
    assert summary.counts["val"]["real"] == 3
    assert summary.counts["test"]["real"] == 3
    label = tmp_path / "test" / "labels"
    assert all(p.read_text() == "" for p in label.glob("*.txt"))


def test_assign_splits_balances_each_plane() -> None:
    items = [
        Item(Path(f"{plane}_{i}.png"), None, f"{plane}-patient-{i}", plane)
        for plane in ("head", "abdomen", "transverse")
        for i in range(40)
    ]
    assignment = assign_splits(items, (0.7, 0.15, 0.15), seed=0)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for item in items:
        counts[item.plane][assignment[item.patient_id]] += 1

    for plane in ("head", "abdomen", "transverse"):
        assert counts[plane]["train"] == 28
        assert counts[plane]["val"] == 6
        assert counts[plane]["test"] == 6


def test_assign_splits_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits([], (0.5, 0.2, 0.2), seed=0)


def test_hold_out_every_third() -> None:
    files = [Path(f"{i:03d}.png") for i in range(9)]
    kept, held_out = hold_out_every(files, 3)

    assert [p.name for p in held_out] == ["000.png", "003.png", "006.png"]
    assert len(kept) == 6
    assert not set(kept) & set(held_out)
