"""Train/validation/test splits that keep each patient on one side and balance planes across sides.

Input folders are YOLO folders (`images/`, `labels/`) with an optional `manifest.csv`
(`file, patient_id, plane`) as `sonomask synth` writes them, or plain folders of negative images.
Images without a manifest row count as their own patient, so a folder of unrelated real images
still splits cleanly.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.research.phantoms import write_dataset_yaml

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    """One image to place in a split, with the label file it comes with (None for a negative)."""

    image: Path
    label: Path | None
    patient_id: str
    plane: str


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def read_folder(folder: Path, default_plane: str) -> list[Item]:
    """Read a YOLO folder or a plain image folder into items.

    The manifest gives patient and plane. Without a manifest row, the patient is the file stem and
    the plane is taken from the label file (the first class name) or `default_plane`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {folder}")
    manifest: dict[str, tuple[str, str]] = {}
    manifest_path = folder / "manifest.csv"
    if manifest_path.is_file():
        with manifest_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                manifest[Path(row["file"]).name] = (row["patient_id"], row["plane"])

    items = []
    for image in list_images(folder):
        label = _label_for(folder, image)
        if image.name in manifest:
            patient_id, plane = manifest[image.name]
        else:
            patient_id = image.stem
            plane = _plane_from_label(label) or default_plane
        items.append(Item(image, label, patient_id, plane))
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return items


def _label_for(folder: Path, image: Path) -> Path | None:
    relative = image.relative_to(folder)
    parts = list(relative.parts)
    if "images" in parts:
        parts[parts.index("images")] = "labels"
    label = (folder / Path(*parts)).with_suffix(".txt")
    return label if label.is_file() else None


def _plane_from_label(label: Path | None) -> str | None:
    if label is None:
        return None
    lines = [line.split() for line in label.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    from service.research.anatomy import CLASS_NAMES

    class_id = int(lines[0][0])
    return CLASS_NAMES[class_id] if 0 <= class_id < len(CLASS_NAMES) else f"class{class_id}"


def assign_splits(
    items: Iterable[Item], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Assign each patient to a split, returning patient id -> split name.

    Patients are visited in a seeded random order, largest first, and each goes to the split
    that is furthest below its target count for the planes that patient contributes. So no
    patient lands in two splits, and each plane (negative planes included) is spread over the
    splits close to `fractions`.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1):
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    per_patient: dict[str, Counter[str]] = defaultdict(Counter)
    for item in items:
        per_patient[item.patient_id][item.plane] += 1
    plane_totals: Counter[str] = Counter()
    for counts in per_patient.values():
        plane_totals.update(counts)

    rng = np.random.default_rng(seed)
    patients = sorted(per_patient)
    rng.shuffle(patients)
    patients.sort(key=lambda p: -sum(per_patient[p].values()))

    placed = {name: Counter[str]() for name in SPLIT_NAMES}
    assignment: dict[str, str] = {}
    for patient in patients:
        counts = per_patient[patient]

        def deficit(split: str, counts: Counter[str] = counts) -> float:
            share = fractions[SPLIT_NAMES.index(split)]
            return sum(
                (share * plane_totals[plane] - placed[split][plane]) / plane_totals[plane] * n
                for plane, n in counts.items()
            )

        best = max(SPLIT_NAMES, key=deficit)
        assignment[patient] = best
        placed[best].update(counts)
    return assignment


@dataclass
class SplitSummary:
    counts: dict[str, Counter[str]]
    patients: dict[str, int]


def build_dataset(
    out_dir: Path,
    labelled: list[Path],
    negatives: list[Path],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    negative_plane: str = "negative",
) -> SplitSummary:
    """Copy labelled and negative folders into train/val/test with a dataset YAML and splits.csv."""
    items: list[Item] = []
    for folder in labelled:
        items.extend(read_folder(folder, default_plane="negative"))
    for folder in negatives:
        for item in read_folder(folder, default_plane=negative_plane):
            # A folder given as negatives has no labels to keep, whatever files lie beside it.
            items.append(Item(item.image, None, item.patient_id, item.plane))
    _check_unique_names(items)

    assignment = assign_splits(items, fractions, seed)
    out_dir = Path(out_dir)
    counts: dict[str, Counter[str]] = {name: Counter() for name in SPLIT_NAMES}
    patients: dict[str, set[str]] = {name: set() for name in SPLIT_NAMES}
    rows = []
    for item in items:
        split = assignment[item.patient_id]
        images_dir = out_dir / split / "images"
        labels_dir = out_dir / split / "labels"
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item.image, images_dir / item.image.name)
        label_text = item.label.read_text() if item.label is not None else ""
        (labels_dir / f"{item.image.stem}.txt").write_text(label_text)
        counts[split][item.plane] += 1
        patients[split].add(item.patient_id)
        rows.append(
            {
                "file": f"{split}/images/{item.image.name}",
                "patient_id": item.patient_id,
                "plane": item.plane,
                "split": split,
            }
        )
    with (out_dir / "splits.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "patient_id", "plane", "split"])
        writer.writeheader()
        writer.writerows(rows)
    write_dataset_yaml(
        out_dir / "dataset.yaml",
        out_dir,
        {"train": "train/images", "val": "val/images", "test": "test/images"},
    )
    return SplitSummary(counts, {name: len(ids) for name, ids in patients.items()})


def _check_unique_names(items: list[Item]) -> None:
    seen: dict[str, Path] = {}
    for item in items:
        if item.image.name in seen:
            raise ValueError(
                f"two input images share the name {item.image.name!r} ({seen[item.image.name]} and "
                f"{item.image}); rename one, because splits are flat folders"
            )
        seen[item.image.name] = item.image


def copy_negative_images(files: Iterable[Path], split_dir: Path, prefix: str) -> int:
    """Copy negative images into `split_dir/images` with empty labels and return how many."""
    images_dir = Path(split_dir) / "images"
    labels_dir = Path(split_dir) / "labels"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for file in files:
        shutil.copy2(file, images_dir / f"{prefix}{file.name}")
        (labels_dir / f"{prefix}{file.stem}.txt").write_text("")
        count += 1
    return count


def hold_out_every(files: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """Split sorted files into (kept, held out), holding out every `every`-th from the first."""
    if every < 2:
        raise ValueError(f"every must be at least 2, got {every}")
    ordered = sorted(files)
    held_out = [f for i, f in enumerate(ordered) if i % every == 0]
    kept = [f for i, f in enumerate(ordered) if i % every != 0]
    return kept, held_out
