"""Synthetic obstetric ultrasound phantoms with exact labels: stills, datasets and probe sweeps.

No public data set shows the fetal genital region, so the project trains and tests on these.
Every output is a pure function of its seed. Labels use two classes, 0 `transverse` and
1 `mid_sagittal`, with square boxes drawn by the rules in `service.research.anatomy`.

Public API used by other parts of the project:
- `render_still(seed, plane, ...)` -> `PhantomStill`
- `synthesize_dataset(out_dir, count, seed, ...)` writes a YOLO folder with a manifest
- `render_video_frames(seed, n_frames, size_wh)` -> iterator of `VideoFrame`
- `write_video(path_mp4, seed, n_frames, size_wh, fps)` writes an mp4 and `<stem>.json`
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import yaml

from service.research.anatomy import (
    CLASS_NAMES,
    NEGATIVE_PLANES,
    PLANE_DRAWERS,
    POSITIVE_PLANES,
    Frame,
    Scene,
    Target,
    Tissue,
    add_texture,
    draw_background,
    draw_cavity,
)
from service.research.imaging import (
    BeamGrid,
    FieldOfView,
    ImagingParams,
    beam_grid_for,
    complex_speckle,
    evolve_speckle,
    form_bmode,
    random_field_of_view,
)
from service.research.overlays import OverlayStyle, draw_overlays

BoxLabel = tuple[int, tuple[float, float, float, float]]

# Share of each negative plane among negatives. The hard negatives (thighs without the genital
# region, the sagittal trunk without the tubercle) teach the detector what the target is not.
NEGATIVE_WEIGHTS = {
    "head": 0.16,
    "abdomen": 0.16,
    "thorax": 0.13,
    "femur": 0.13,
    "cervix": 0.1,
    "empty": 0.12,
    "thighs": 0.1,
    "trunk_sagittal": 0.1,
}
STUDY_NEGATIVE_SHARE = 0.72


@dataclass(frozen=True)
class Patient:
    """Settings shared by all images of one simulated pregnancy."""

    patient_id: str
    tissue: Tissue
    fetal_scale: float
    overlay_style: OverlayStyle
    overlay_share: float

    @staticmethod
    def random(patient_id: str, rng: np.random.Generator) -> Patient:
        return Patient(
            patient_id=patient_id,
            tissue=Tissue.random(rng),
            fetal_scale=float(rng.uniform(0.9, 1.5)),
            overlay_style=OverlayStyle.random(rng),
            overlay_share=float(rng.uniform(0.5, 1.0)),
        )


@dataclass
class PhantomStill:
    """One rendered still: the picture with and without overlays, and its labels."""

    image_bgr: np.ndarray
    clean_bgr: np.ndarray
    boxes: list[BoxLabel]
    plane: str
    patient_id: str
    has_overlays: bool


class PlacementError(RuntimeError):
    """No placement kept the target inside the field of view."""


def _fetal_scale(patient: Patient, size_wh: tuple[int, int], rng: np.random.Generator) -> float:
    return patient.fetal_scale * min(size_wh) / 480.0 * float(rng.uniform(0.85, 1.15))


def _sample_inside(rng: np.random.Generator, fov: FieldOfView, margin01: float) -> np.ndarray:
    width, height = fov.size_wh
    for _ in range(200):
        point = rng.uniform([0.0, 0.0], [width, height])
        if fov.contains(point[None], margin01=margin01)[0]:
            return point
    raise PlacementError(f"no point found {margin01} inside the field {fov}")


def _box_corners(box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]])


def render_still(
    seed: int | list[int],
    plane: str,
    *,
    size_wh: tuple[int, int] = (640, 480),
    patient: Patient | None = None,
    overlays: bool | None = None,
) -> PhantomStill:
    """Render one still of `plane` (a name in `PLANE_DRAWERS`).

    Positive planes always return one box, fully inside the field of view. `overlays=None`
    burns annotations with the patient's usual probability.
    """
    if plane not in PLANE_DRAWERS:
        raise ValueError(f"unknown plane {plane!r}; expected one of {sorted(PLANE_DRAWERS)}")
    rng = np.random.default_rng(seed)
    if patient is None:
        patient = Patient.random("P000000", rng)

    fov = random_field_of_view(rng, size_wh)
    grid = beam_grid_for(fov)
    for _ in range(30):
        scene, target = _draw_scene(rng, plane, patient, fov, size_wh)
        if target is None:
            break
        box = target.box_xyxy()
        if fov.contains(_box_corners(box), margin01=0.01).all():
            break
    else:
        raise PlacementError(f"plane {plane!r} did not fit the field after 30 placements")

    params = ImagingParams.random(rng)
    speckle = complex_speckle(rng, (grid.n_depth, grid.n_beams), params)
    grey = form_bmode(scene.echo, scene.bone, grid, params, speckle)
    clean = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    image = clean.copy()
    has_overlays = bool(rng.random() < patient.overlay_share) if overlays is None else overlays
    if has_overlays:
        draw_overlays(image, rng, fov, patient.overlay_style)
    boxes: list[BoxLabel] = [] if target is None else [(target.class_id, target.box_xyxy())]
    return PhantomStill(image, clean, boxes, plane, patient.patient_id, has_overlays)


def _draw_scene(
    rng: np.random.Generator,
    plane: str,
    patient: Patient,
    fov: FieldOfView,
    size_wh: tuple[int, int],
) -> tuple[Scene, Target | None]:
    scale = _fetal_scale(patient, size_wh, rng)
    center = _sample_inside(rng, fov, margin01=0.22)
    scene = Scene.blank(size_wh)
    with_cavity = plane != "cervix" and rng.random() < 0.9
    draw_background(
        scene,
        patient.tissue,
        rng,
        (float(center[0]), float(center[1])),
        cavity_radius=110.0 * scale,
        with_cavity=with_cavity,
    )
    frame = Frame(scene, (float(center[0]), float(center[1])), scale, float(rng.uniform(0, 360)))
    target = PLANE_DRAWERS[plane](frame, patient.tissue, rng)
    add_texture(scene, rng, strength=float(rng.uniform(0.15, 0.35)))
    return scene, target


def choose_plane(rng: np.random.Generator, negative_share: float) -> str:
    """Draw a plane name: a negative with probability `negative_share`, else a positive."""
    if rng.random() < negative_share:
        names = list(NEGATIVE_WEIGHTS)
        weights = np.array([NEGATIVE_WEIGHTS[n] for n in names])
        return str(rng.choice(names, p=weights / weights.sum()))
    return str(rng.choice(POSITIVE_PLANES))


def yolo_label_lines(boxes: list[BoxLabel], size_wh: tuple[int, int]) -> list[str]:
    """Format boxes as YOLO label lines: class, centre x, centre y, width, height (0..1)."""
    width, height = size_wh
    lines = []
    for class_id, (x0, y0, x1, y1) in boxes:
        x0, x1 = max(0.0, x0), min(float(width), x1)
        y0, y1 = max(0.0, y0), min(float(height), y1)
        lines.append(
            f"{class_id} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
            f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"
        )
    return lines


def write_dataset_yaml(path: Path, root: Path, splits: dict[str, str]) -> None:
    """Write an ultralytics dataset YAML with the two class names."""
    content = {"path": str(root.resolve()), **splits, "names": dict(enumerate(CLASS_NAMES))}
    path.write_text(yaml.safe_dump(content, sort_keys=False))


@dataclass
class SynthSummary:
    images: int = 0
    patients: int = 0
    per_plane: dict[str, int] = field(default_factory=dict)


def synthesize_dataset(
    out_dir: Path,
    count: int,
    seed: int,
    *,
    size_wh: tuple[int, int] = (640, 480),
    negative_share: float = STUDY_NEGATIVE_SHARE,
    images_per_patient: tuple[int, int] = (3, 8),
    image_format: str = "jpg",
    progress: bool = True,
) -> SynthSummary:
    """Write `count` stills as a YOLO folder: images/, labels/, manifest.csv and dataset.yaml.

    Several images share each patient id so that splits can keep a patient on one side.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not 0.0 <= negative_share <= 1.0:
        raise ValueError(f"negative share must be within 0..1, got {negative_share}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    summary = SynthSummary()
    rows = []
    patient_rng = np.random.default_rng([seed, 0])
    bar = tqdm(total=count, desc="synth", unit="img", disable=not progress)
    patient_index = 0
    while summary.images < count:
        patient_index += 1
        patient_id = f"S{seed}P{patient_index:05d}"
        patient = Patient.random(patient_id, np.random.default_rng([seed, 1, patient_index]))
        n_images = int(patient_rng.integers(images_per_patient[0], images_per_patient[1] + 1))
        for image_index in range(min(n_images, count - summary.images)):
            image_seed = [seed, 2, patient_index, image_index]
            plane = choose_plane(np.random.default_rng([*image_seed, 0]), negative_share)
            still = render_still(image_seed, plane, size_wh=size_wh, patient=patient)
            stem = f"{patient_id}_{image_index:02d}_{plane}"
            image_path = out_dir / "images" / f"{stem}.{image_format}"
            cv2.imwrite(str(image_path), still.image_bgr)
            label_lines = yolo_label_lines(still.boxes, size_wh)
            (out_dir / "labels" / f"{stem}.txt").write_text(
                "".join(f"{line}\n" for line in label_lines)
            )
            rows.append(
                {
                    "file": f"images/{image_path.name}",
                    "patient_id": patient_id,
                    "plane": plane,
                    "class_id": still.boxes[0][0] if still.boxes else -1,
                    "overlays": int(still.has_overlays),
                }
            )
            summary.images += 1
            summary.per_plane[plane] = summary.per_plane.get(plane, 0) + 1
            bar.update(1)
        summary.patients += 1
    bar.close()

    with (out_dir / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # A phantom folder is one unsplit set, so every split names it. `build-dataset` splits it.
    splits = {"train": "images", "val": "images", "test": "images"}
    write_dataset_yaml(out_dir / "dataset.yaml", out_dir, splits)
    return summary


# --- Probe sweeps ---------------------------------------------------------------------------


@dataclass
class VideoFrame:
    """One frame of a sweep: BGR uint8 pixels and the true boxes (class id, xyxy in pixels)."""

    index: int
    image_bgr: np.ndarray
    boxes: list[BoxLabel]
    is_hard: bool = False


@dataclass(frozen=True)
class _Pose:
    center_xy: np.ndarray  # world point shown at the middle of the field
    rotation_deg: float
    zoom: float


def _view_affine(pose: _Pose, fov_center_xy: np.ndarray) -> np.ndarray:
    theta = math.radians(pose.rotation_deg)
    rotation = pose.zoom * np.array(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    offset = fov_center_xy - rotation @ pose.center_xy
    return np.hstack([rotation, offset[:, None]]).astype(np.float64)


def _smoothstep(t: float) -> float:
    t = min(1.0, max(0.0, t))
    return t * t * (3.0 - 2.0 * t)


def _interpolate_pose(keys: list[tuple[float, np.ndarray, float, float]], t: float) -> _Pose:
    """Ease between the two key poses (time 0..1, centre, rotation, zoom) around time `t`."""
    for (t0, c0, r0, z0), (t1, c1, r1, z1) in itertools.pairwise(keys):
        if t0 <= t <= t1:
            u = _smoothstep((t - t0) / (t1 - t0))
            return _Pose(c0 + (c1 - c0) * u, r0 + (r1 - r0) * u, z0 + (z1 - z0) * u)
    _, center, rotation, zoom = keys[-1]
    return _Pose(center, rotation, zoom)


def _fov_center(fov: FieldOfView) -> np.ndarray:
    width, height = fov.size_wh
    points = fov.beam_to_image(np.array([0.5]), np.array([0.5]))
    return np.array([float(points[0, 0]), float(points[0, 1])]) if width and height else points[0]


def _visible_fraction(box: tuple[float, float, float, float], fov: FieldOfView) -> float:
    xs = np.linspace(box[0], box[2], 6)
    ys = np.linspace(box[1], box[3], 6)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    return float(fov.contains(grid).mean())


class _Sweep:
    """A world scene with one target and two negatives, and the probe path across it.

    NOTE: the probe moves within one flat scene, so planes change by sliding sideways. A real
    sweep tilts through the body and the anatomy itself changes shape between planes.
    """

    def __init__(self, seed: int, n_frames: int, size_wh: tuple[int, int]) -> None:
        self.rng = np.random.default_rng([seed, 9])
        rng = self.rng
        self.size_wh = size_wh
        self.n_frames = n_frames
        self.patient = Patient.random(f"V{seed}", rng)
        self.fov = random_field_of_view(rng, size_wh)
        self.grid: BeamGrid = beam_grid_for(self.fov)
        self.params = ImagingParams.random(rng)
        self.overlay_seed = int(rng.integers(1 << 31))
        self.overlays = bool(rng.random() < 0.8)
        self.fov_center = _fov_center(self.fov)

        width, height = size_wh
        world_wh = (int(width * 3), int(height * 1.6))
        scale = _fetal_scale(self.patient, size_wh, rng)
        self.scene = Scene.blank(world_wh)
        tissue = self.patient.tissue
        middle = np.array([world_wh[0] / 2, world_wh[1] / 2])
        draw_background(
            self.scene,
            tissue,
            rng,
            (float(middle[0]), float(middle[1])),
            cavity_radius=0.0,
            with_cavity=False,
        )
        spacing = width * 0.95
        step = np.array([spacing, 0.0])
        stops = [middle - step, middle, middle + step]
        for stop in stops:
            draw_cavity(self.scene, tissue, rng, (float(stop[0]), float(stop[1])), 110.0 * scale)
        target_plane = str(rng.choice(POSITIVE_PLANES))
        negative_planes = rng.choice(
            [p for p in NEGATIVE_PLANES if p not in ("cervix", "empty")], size=2, replace=False
        )
        planes = [str(negative_planes[0]), target_plane, str(negative_planes[1])]
        self.target: Target | None = None
        for stop, plane in zip(stops, planes, strict=True):
            jitter = rng.uniform(-0.05, 0.05, size=2) * width
            frame = Frame(self.scene, tuple(stop + jitter), scale, float(rng.uniform(0, 360)))
            drawn = PLANE_DRAWERS[plane](frame, tissue, rng)
            if drawn is not None:
                self.target = drawn
        add_texture(self.scene, rng, strength=float(rng.uniform(0.15, 0.3)))
        self.poses = self._plan_path(stops)
        self.gain_db = self._plan_gain()
        self.hard = self._plan_hard_frames()

    def _plan_path(self, stops: list[np.ndarray]) -> list[_Pose]:
        """Glide from the first negative to the target, wander around it, then leave to the last."""
        rng = self.rng
        n = self.n_frames
        target_center = self.target.center_xy if self.target is not None else stops[1]
        keys: list[tuple[float, np.ndarray, float, float]] = [
            (0.0, stops[0], 0.0, 1.0),
            (0.2, target_center, rng.uniform(-8, 8), rng.uniform(0.95, 1.15)),
            (
                0.45,
                target_center + rng.uniform(-20, 20, 2),
                rng.uniform(-15, 15),
                rng.uniform(0.9, 1.3),
            ),
            # A slip sideways so the target half leaves the field, then comes back.
            (
                0.55,
                target_center + np.array([self.size_wh[0] * rng.choice([-0.35, 0.35]), 0.0]),
                rng.uniform(-10, 10),
                1.0,
            ),
            (
                0.68,
                target_center + rng.uniform(-15, 15, 2),
                rng.uniform(-10, 10),
                rng.uniform(0.95, 1.2),
            ),
            (0.8, target_center, 0.0, 1.0),
            (1.0, stops[2], rng.uniform(-10, 10), 1.0),
        ]
        poses = []
        for index in range(n):
            pose = _interpolate_pose(keys, index / max(1, n - 1))
            tremor = np.array([math.sin(index * 0.7), math.cos(index * 0.53)]) * 1.5
            poses.append(_Pose(pose.center_xy + tremor, pose.rotation_deg, pose.zoom))
        return poses

    def _plan_gain(self) -> np.ndarray:
        n = self.n_frames
        phase = self.rng.uniform(0, 2 * math.pi)
        index = np.arange(n)
        gain = 3.0 * np.sin(index / max(1, n) * 2 * math.pi * 1.5 + phase)
        step_start = int(self.rng.integers(0, max(1, n)))
        gain[step_start : step_start + max(2, n // 12)] -= self.rng.uniform(4.0, 9.0)
        return gain

    def _plan_hard_frames(self) -> np.ndarray:
        """Pick a few frames for heavy blur or a shadow band, as when the probe slips."""
        hard = np.zeros(self.n_frames, dtype=bool)
        n_hard = max(1, self.n_frames // 25)
        hard[self.rng.choice(self.n_frames, size=min(n_hard, self.n_frames), replace=False)] = True
        return hard

    def frames(self) -> Iterator[VideoFrame]:
        rng = self.rng
        grid = self.grid
        speckle = complex_speckle(rng, (grid.n_depth, grid.n_beams), self.params)
        beams = np.arange(grid.n_beams, dtype=np.float32)
        previous_center = self.poses[0].center_xy
        shadow_center = rng.uniform(0, grid.n_beams)
        for index, pose in enumerate(self.poses):
            speed = float(np.linalg.norm(pose.center_xy - previous_center))
            previous_center = pose.center_xy
            speckle = evolve_speckle(
                rng, speckle, self.params, np.clip(0.92 - speed * 0.04, 0.3, 0.92)
            )
            affine = _view_affine(pose, self.fov_center)
            params = ImagingParams(
                **{
                    **self.params.__dict__,
                    "gain_db": self.params.gain_db + float(self.gain_db[index]),
                }
            )
            shadow_center = (shadow_center + 0.6) % grid.n_beams
            shadow = 1.2 * np.exp(-(((beams - shadow_center) / (grid.n_beams * 0.05)) ** 2))
            blur = min(9.0, speed * 0.4)
            if self.hard[index]:
                if rng.random() < 0.5:
                    blur = 15.0
                else:
                    shadow = shadow + 3.0 * np.exp(
                        -(((beams - grid.n_beams / 2) / (grid.n_beams * 0.15)) ** 2)
                    )
            grey = form_bmode(
                self.scene.echo,
                self.scene.bone,
                grid,
                params,
                speckle,
                scene_to_image=affine,
                beam_shadow=shadow,
                motion_blur_px=blur,
            )
            image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
            if self.overlays:
                draw_overlays(
                    image,
                    np.random.default_rng(self.overlay_seed),
                    self.fov,
                    self.patient.overlay_style,
                    frame_rate_hz=25,
                )
            yield VideoFrame(index, image, self._boxes(affine), bool(self.hard[index]))

    def _boxes(self, affine: np.ndarray) -> list[BoxLabel]:
        if self.target is None:
            return []
        box = self.target.transformed(affine).box_xyxy()
        if _visible_fraction(box, self.fov) < 0.5:
            return []
        width, height = self.size_wh
        clipped = (
            max(0.0, box[0]),
            max(0.0, box[1]),
            min(float(width), box[2]),
            min(float(height), box[3]),
        )
        return [(self.target.class_id, clipped)]


def render_video_frames(
    seed: int, n_frames: int, size_wh: tuple[int, int] = (640, 480)
) -> Iterator[VideoFrame]:
    """Yield the frames of a probe sweep across a negative, a target and another negative.

    The probe translates, rotates and zooms; gain drifts and drops; a shadow band wanders; a few
    frames are blurred or shadowed hard. The target enters, half leaves and re-enters the view.
    A box is given while at least half of it is inside the field of view.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if size_wh[0] < 64 or size_wh[1] < 64:
        raise ValueError(f"size_wh must be at least 64×64, got {size_wh}")
    yield from _Sweep(seed, n_frames, size_wh).frames()


def write_video(
    path_mp4: Path | str,
    seed: int,
    n_frames: int,
    size_wh: tuple[int, int] = (640, 480),
    fps: float = 25.0,
) -> Path:
    """Write a sweep as H.264 mp4 and its per-frame ground truth as `<stem>.json` beside it."""
    import av

    path = Path(path_mp4)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size_wh
    if width % 2 or height % 2:
        raise ValueError(f"H.264 needs an even frame size, got {size_wh}")
    truth_frames = []
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in render_video_frames(seed, n_frames, size_wh):
            video_frame = av.VideoFrame.from_ndarray(frame.image_bgr, format="bgr24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
            truth_frames.append(
                {
                    "index": frame.index,
                    "is_hard": frame.is_hard,
                    "boxes": [
                        {"class_id": class_id, "box_xyxy": [round(v, 2) for v in box]}
                        for class_id, box in frame.boxes
                    ],
                }
            )
        for packet in stream.encode():
            container.mux(packet)
    truth = {"fps": fps, "size_wh": [width, height], "frames": truth_frames}
    path.with_suffix(".json").write_text(json.dumps(truth, indent=1))
    return path
