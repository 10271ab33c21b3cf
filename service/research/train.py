"""Training a detector from scratch with ultralytics, offline, with the study's augmentations.

The study trained YOLOv5L at 384 px with flips, shift/scale/rotate, brightness and contrast, blur,
mosaic and mixup, and a one-cycle learning rate. ultralytics has all of these except blur, which
it applies only when the albumentations package is installed. `yolov5l.yaml` builds the
ultralytics version of that network (with an anchor-free head), and `yolov8n.yaml` the nano
default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL_CONFIG = "yolov8n.yaml"
STUDY_MODEL_CONFIG = "yolov5l.yaml"
STUDY_IMGSZ = 384


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; `as_ultralytics` turns them into `YOLO.train` arguments."""

    data: Path
    model: str = DEFAULT_MODEL_CONFIG
    epochs: int = 50
    imgsz: int = STUDY_IMGSZ
    batch: int = 16
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    project: Path = Path("runs/sonomask")
    name: str = "train"
    cache: str | bool = "ram"
    optimizer: str = "AdamW"
    lr0: float = 0.002
    lrf: float = 0.01
    warmup_epochs: float = 1.0
    close_mosaic: int = 4
    patience: int = 100
    # The study's augmentations. Ultrasound is grey, so hue and saturation stay off, and the fan
    # always opens downwards, so vertical flips stay off.
    fliplr: float = 0.5
    flipud: float = 0.0
    degrees: float = 10.0
    translate: float = 0.1
    scale: float = 0.3
    hsv_h: float = 0.0
    hsv_s: float = 0.0
    hsv_v: float = 0.3
    mosaic: float = 1.0
    mixup: float = 0.05

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.imgsz < 32 or self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32 and at least 32, got {self.imgsz}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")

    def as_ultralytics(self) -> dict[str, Any]:
        arguments = asdict(self)
        arguments.pop("model")
        arguments["data"] = str(self.data)
        arguments["project"] = str(Path(self.project).resolve())
        # NOTE: the study's blur augmentation needs the albumentations package, which the project
        # does not install, so training runs without it.
        arguments.update(
            cos_lr=True,  # one-cycle schedule: warm-up, then cosine decay to lr0 * lrf
            deterministic=True,
            plots=False,
            amp=self.device != "cpu",
            exist_ok=True,
            verbose=True,
        )
        return arguments


def train(config: TrainConfig) -> Path:
    """Train from a model `.yaml` or a local `.pt` file and return the path of best.pt.

    A `.pt` that is not on disk is rejected, because ultralytics would try to download it.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    if not Path(config.data).is_file():
        raise FileNotFoundError(f"dataset YAML not found: {config.data}")
    is_config = config.model.endswith((".yaml", ".yml"))
    if not is_config and not Path(config.model).is_file():
        raise ValueError(
            f"model must be a .yaml config or an existing local weights file, got "
            f"{config.model!r}; nothing is downloaded"
        )
    from ultralytics import YOLO

    model = YOLO(config.model, task="detect")
    model.train(**config.as_ultralytics())
    best = Path(config.project).resolve() / config.name / "weights" / "best.pt"
    if not best.is_file():
        raise RuntimeError(f"training finished without writing {best}")
    return best
