"""Drawn fetal and maternal structures for phantoms, with the geometry of the labelled target.

Each `draw_*` function paints one plane into a `Scene` (echogenicity and bone maps) around a
centre, at a scale and rotation, in a local frame whose unit is about one pixel at scale 1.
The two target planes also return a `Target`: the points a labeller would enclose. Their box
is square by the study's rules (see `Target.box_xyxy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

TRANSVERSE = 0
MID_SAGITTAL = 1
CLASS_NAMES = ("transverse", "mid_sagittal")

POSITIVE_PLANES = ("transverse", "mid_sagittal")
NEGATIVE_PLANES = (
    "head",
    "abdomen",
    "thorax",
    "femur",
    "cervix",
    "empty",
    "thighs",
    "trunk_sagittal",
)


@dataclass
class Target:
    """A labelled region: the class, the box centre and the points the square box must enclose."""

    class_id: int
    center_xy: np.ndarray
    points_xy: np.ndarray

    def transformed(self, affine: np.ndarray) -> Target:
        """Return the target moved by a 2×3 affine transform of the scene."""

        def apply(points: np.ndarray) -> np.ndarray:
            return points @ affine[:, :2].T + affine[:, 2]

        return Target(self.class_id, apply(self.center_xy[None])[0], apply(self.points_xy))

    def box_xyxy(self) -> tuple[float, float, float, float]:
        """Square box centred on `center_xy` whose half side reaches the farthest point."""
        offsets = np.abs(self.points_xy - self.center_xy[None])
        half = float(offsets.max())
        cx, cy = (float(v) for v in self.center_xy)
        return (cx - half, cy - half, cx + half, cy + half)


@dataclass
class Scene:
    """Float32 echogenicity and bone maps plus the targets drawn so far."""

    echo: np.ndarray
    bone: np.ndarray
    targets: list[Target] = field(default_factory=list)

    @staticmethod
    def blank(size_wh: tuple[int, int]) -> Scene:
        width, height = size_wh
        return Scene(np.zeros((height, width), np.float32), np.zeros((height, width), np.float32))


@dataclass(frozen=True)
class Tissue:
    """Echogenicity levels of one fetus and mother, fixed per patient."""

    fluid: float
    soft: float
    skin: float
    bone: float
    maternal: float
    placenta: float

    @staticmethod
    def random(rng: np.random.Generator) -> Tissue:
        return Tissue(
            fluid=float(rng.uniform(0.004, 0.03)),
            soft=float(rng.uniform(0.18, 0.4)),
            skin=float(rng.uniform(0.5, 0.9)),
            bone=float(rng.uniform(1.2, 2.2)),
            maternal=float(rng.uniform(0.2, 0.45)),
            placenta=float(rng.uniform(0.3, 0.6)),
        )


class Frame:
    """A local drawing frame: origin, rotation and scale onto a scene."""

    def __init__(
        self, scene: Scene, center_xy: tuple[float, float], scale: float, angle_deg: float
    ):
        self.scene = scene
        self.center = np.asarray(center_xy, dtype=np.float64)
        self.scale = scale
        self.angle_deg = angle_deg
        theta = math.radians(angle_deg)
        self.rotation = np.array(
            [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
        )

    def to_scene(self, points_local: np.ndarray | list[tuple[float, float]]) -> np.ndarray:
        points = np.asarray(points_local, dtype=np.float64).reshape(-1, 2)
        return points * self.scale @ self.rotation.T + self.center

    def direction(self, angle_local_deg: float) -> np.ndarray:
        theta = math.radians(angle_local_deg)
        return np.array([math.cos(theta), math.sin(theta)])

    def ellipse(
        self,
        center: tuple[float, float],
        axes: tuple[float, float],
        value: float,
        *,
        rotation_deg: float = 0.0,
        thickness: int = -1,
        layer: str = "echo",
    ) -> None:
        cx, cy = self.to_scene([center])[0]
        size = (max(1.0, 2 * axes[0] * self.scale), max(1.0, 2 * axes[1] * self.scale))
        box = ((float(cx), float(cy)), size, self.angle_deg + rotation_deg)
        target = self.scene.echo if layer == "echo" else self.scene.bone
        if thickness > 0:
            thickness = max(1, round(thickness * self.scale))
        cv2.ellipse(target, box, float(value), thickness)

    def line(
        self,
        start: tuple[float, float],
        end: tuple[float, float],
        value: float,
        thickness: float,
        *,
        layer: str = "echo",
    ) -> None:
        points = np.round(self.to_scene([start, end]) * 16).astype(np.int32)
        target = self.scene.echo if layer == "echo" else self.scene.bone
        width = max(1, round(thickness * self.scale))
        cv2.line(target, tuple(points[0]), tuple(points[1]), float(value), width, shift=4)

    def polygon(self, points_local: list[tuple[float, float]], value: float) -> None:
        points = np.round(self.to_scene(points_local) * 16).astype(np.int32)
        cv2.fillPoly(self.scene.echo, [points], float(value), shift=4)


def _bone_bar(
    frame: Frame,
    start: tuple[float, float],
    end: tuple[float, float],
    tissue: Tissue,
    thickness: float,
    density: float = 1.0,
) -> None:
    frame.line(start, end, tissue.bone, thickness)
    frame.line(start, end, density, thickness, layer="bone")


def _bone_dot(
    frame: Frame, center: tuple[float, float], radius: float, tissue: Tissue, density: float = 1.0
) -> None:
    frame.ellipse(center, (radius, radius * 0.8), tissue.bone)
    frame.ellipse(center, (radius, radius * 0.8), density, layer="bone")


def _body(
    frame: Frame,
    center: tuple[float, float],
    axes: tuple[float, float],
    tissue: Tissue,
    rng: np.random.Generator,
    rotation_deg: float = 0.0,
) -> None:
    frame.ellipse(center, axes, tissue.soft * rng.uniform(0.85, 1.15), rotation_deg=rotation_deg)
    frame.ellipse(center, axes, tissue.skin, rotation_deg=rotation_deg, thickness=2)


def draw_transverse(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> Target:
    """Transverse plane through the perineum: both thighs, the genital region between them."""
    genital_w = rng.uniform(13.0, 22.0)
    genital_h = rng.uniform(13.0, 24.0)
    gap = 2 * genital_w + rng.uniform(4.0, 18.0)
    thigh_w = rng.uniform(26.0, 40.0)
    thigh_l = rng.uniform(60.0, 95.0)
    genital_y = rng.uniform(-4.0, 10.0)
    perineum_y = genital_y - genital_h - rng.uniform(4.0, 10.0)

    _body(frame, (0.0, perineum_y - 45.0), (gap / 2 + thigh_w * 1.6, 50.0), tissue, rng)
    for side in (-1.0, 1.0):
        tilt = side * rng.uniform(-6.0, 18.0)
        thigh_cx = side * (gap / 2 + thigh_w)
        thigh_cy = genital_y + thigh_l * 0.35
        _body(frame, (thigh_cx, thigh_cy), (thigh_w, thigh_l), tissue, rng, rotation_deg=-tilt)
        if rng.random() < 0.5:
            half = thigh_l * 0.55
            dx = math.sin(math.radians(tilt)) * half
            _bone_bar(
                frame,
                (thigh_cx + dx, thigh_cy - half),
                (thigh_cx - dx, thigh_cy + half),
                tissue,
                rng.uniform(4.0, 7.0),
            )
        else:
            _bone_dot(
                frame, (thigh_cx + side * rng.uniform(-5, 5), thigh_cy), rng.uniform(5, 8), tissue
            )
    # Perineal bridge joining the thighs above the genital region.
    frame.ellipse((0.0, perineum_y - 4.0), (gap / 2 + 4.0, 9.0), tissue.soft)

    _draw_genital_region(frame, tissue, rng, (0.0, genital_y), genital_w, genital_h)

    center = frame.to_scene([(0.0, (genital_y + perineum_y) / 2 + genital_h * 0.25)])[0]
    points = frame.to_scene(
        [
            (-gap / 2 - 2.0, genital_y),
            (gap / 2 + 2.0, genital_y),
            (0.0, perineum_y - 2.0),
            (0.0, genital_y + genital_h + 3.0),
        ]
    )
    return Target(TRANSVERSE, center, points)


def _draw_genital_region(
    frame: Frame,
    tissue: Tissue,
    rng: np.random.Generator,
    center: tuple[float, float],
    half_w: float,
    half_h: float,
) -> None:
    """Draw one of several appearances at random, so the box never depends on one of them."""
    cx, cy = center
    bright = tissue.skin * rng.uniform(1.1, 1.6)
    soft = tissue.soft * rng.uniform(1.0, 1.3)
    variant = rng.integers(0, 3)
    if variant == 0:
        frame.ellipse(center, (half_w, half_h), soft)
        spacing = half_w * rng.uniform(0.35, 0.55)
        for offset in (-spacing, 0.0, spacing):
            frame.line(
                (cx + offset, cy - half_h * 0.7), (cx + offset, cy + half_h * 0.8), bright, 2
            )
    elif variant == 1:
        frame.ellipse(center, (half_w, half_h * 0.9), soft)
        for side in (-1.0, 1.0):
            frame.ellipse(
                (cx + side * half_w * 0.45, cy + half_h * 0.15),
                (half_w * 0.35, half_h * 0.4),
                soft * 0.55,
            )
        frame.line((cx, cy - half_h * 0.8), (cx, cy + half_h * 0.9), bright, 2)
        frame.ellipse((cx, cy - half_h * 0.55), (half_w * 0.25, half_h * 0.35), bright * 0.8)
    else:
        for side in (-1.0, 1.0):
            frame.ellipse((cx + side * half_w * 0.48, cy), (half_w * 0.52, half_h), soft)
            frame.ellipse(
                (cx + side * half_w * 0.48, cy), (half_w * 0.52, half_h), bright * 0.7, thickness=2
            )
        frame.line((cx, cy - half_h), (cx, cy + half_h * 0.9), bright, 2)


def draw_mid_sagittal(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> Target:
    """Mid-sagittal plane of the lower trunk with the genital tubercle as a bright short line."""
    base, normal = _draw_trunk_sagittal(frame, tissue, rng)
    length = rng.uniform(16.0, 30.0)
    caudal = np.array([1.0, 0.0])
    tilt = math.radians(rng.uniform(20.0, 55.0)) * rng.choice([-1.0, 1.0])
    direction = normal * math.cos(tilt) + caudal * math.sin(tilt)
    direction /= np.linalg.norm(direction)
    tip = base + direction * length
    mid = (base + tip) / 2
    frame.ellipse(
        tuple(base + direction * length * 0.35),
        (length * 0.55, length * 0.3),
        tissue.soft * rng.uniform(1.0, 1.3),
        rotation_deg=math.degrees(math.atan2(direction[1], direction[0])),
    )
    frame.line(
        tuple(base - direction * 3.0),
        tuple(tip),
        tissue.skin * rng.uniform(1.3, 1.9),
        rng.uniform(2.5, 4.0),
    )

    center = frame.to_scene([tuple(mid - normal * length * 0.25)])[0]
    points = frame.to_scene(
        [tuple(base - normal * length * 0.9), tuple(tip + direction * 3.0), tuple(base)]
    )
    return Target(MID_SAGITTAL, center, points)


def _draw_trunk_sagittal(
    frame: Frame, tissue: Tissue, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Lower trunk in a sagittal cut; returns the perineum point and its outward normal (local)."""
    half_len = rng.uniform(100.0, 140.0)
    half_thick = rng.uniform(45.0, 62.0)
    trunk_cx = -half_len * 0.75
    _body(frame, (trunk_cx, 0.0), (half_len, half_thick), tissue, rng)
    spine_y = -half_thick * rng.uniform(0.6, 0.75)
    step = rng.uniform(8.0, 11.0)
    for x in np.arange(trunk_cx - half_len * 0.8, trunk_cx + half_len * 0.75, step):
        _bone_dot(frame, (float(x), spine_y), rng.uniform(2.5, 3.8), tissue, density=0.6)
    if rng.random() < 0.6:
        # A flexed thigh just out of the midline, dim because it is partly out of plane.
        frame.ellipse(
            (trunk_cx + half_len * 0.9, half_thick * 1.6),
            (22.0, 60.0),
            tissue.soft * 0.7,
            rotation_deg=rng.uniform(-50.0, -20.0),
        )

    t = math.radians(rng.uniform(45.0, 65.0))
    base = np.array([trunk_cx + half_len * math.cos(t), half_thick * math.sin(t)])
    normal = np.array([math.cos(t) / half_len, math.sin(t) / half_thick])
    return base, normal / np.linalg.norm(normal)


def draw_trunk_sagittal(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> None:
    """Hard negative: the sagittal trunk with no tubercle."""
    _draw_trunk_sagittal(frame, tissue, rng)


def draw_thighs(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> None:
    """Hard negative: both thighs cut below the perineum, fluid between them."""
    gap = rng.uniform(40.0, 110.0)
    for side in (-1.0, 1.0):
        cx = side * (gap / 2 + 32.0)
        _body(
            frame,
            (cx, 0.0),
            (rng.uniform(26.0, 40.0), rng.uniform(40.0, 80.0)),
            tissue,
            rng,
            rotation_deg=side * rng.uniform(-10.0, 25.0),
        )
        _bone_dot(frame, (cx, rng.uniform(-10.0, 10.0)), rng.uniform(5.0, 8.0), tissue)


def draw_head(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> None:
    axes = (rng.uniform(75.0, 105.0), rng.uniform(60.0, 85.0))
    frame.ellipse((0.0, 0.0), (axes[0] + 6, axes[1] + 6), tissue.soft)
    frame.ellipse((0.0, 0.0), axes, tissue.soft * rng.uniform(0.3, 0.6))
    frame.ellipse((0.0, 0.0), axes, tissue.bone, thickness=int(rng.uniform(4, 8)))
    frame.ellipse((0.0, 0.0), axes, 0.5, thickness=5, layer="bone")
    frame.line((-axes[0] * 0.9, 0.0), (axes[0] * 0.9, 0.0), tissue.skin * 0.8, 2)
    for side in (-1.0, 1.0):
        frame.ellipse(
            (rng.uniform(-8, 8), side * axes[1] * 0.22),
            (axes[0] * 0.18, axes[1] * 0.12),
            tissue.soft * 0.2,
        )
    frame.ellipse((-axes[0] * 0.35, 0.0), (axes[0] * 0.1, axes[1] * 0.07), tissue.fluid)


def draw_abdomen(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> None:
    axes = (rng.uniform(65.0, 95.0), rng.uniform(58.0, 85.0))
    _body(frame, (0.0, 0.0), axes, tissue, rng)
    frame.ellipse(
        (rng.uniform(-25, 5), -axes[1] * 0.25),
        (rng.uniform(12, 24), rng.uniform(9, 16)),
        tissue.fluid * 2,
    )
    frame.line((axes[0] * 0.5, axes[1] * 0.1), (0.0, axes[1] * 0.3), tissue.fluid * 3, 5)
    spine = (-axes[0] * 0.72, 0.0)
    for dy, dx in ((-8.0, 0.0), (8.0, 0.0), (0.0, -9.0)):
        _bone_dot(frame, (spine[0] + dx, spine[1] + dy), 4.0, tissue)


def draw_thorax(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> None:
    axes = (rng.uniform(65.0, 95.0), rng.uniform(58.0, 85.0))
    _body(frame, (0.0, 0.0), axes, tissue, rng)
    heart_c = (axes[0] * 0.25, -axes[1] * 0.1)
    heart_r = rng.uniform(26.0, 36.0)
    frame.ellipse(heart_c, (heart_r, heart_r * 0.85), tissue.soft * 1.2)
    for qx in (-1.0, 1.0):
        for qy in (-1.0, 1.0):
            frame.ellipse(
                (heart_c[0] + qx * heart_r * 0.42, heart_c[1] + qy * heart_r * 0.38),
                (heart_r * 0.33, heart_r * 0.3),
                tissue.fluid * 2,
            )
    for angle in np.arange(100.0, 260.0, rng.uniform(18.0, 26.0)):
        theta = math.radians(angle)
        start = (axes[0] * 0.92 * math.cos(theta), axes[1] * 0.92 * math.sin(theta))
        end = (axes[0] * 0.97 * math.cos(theta + 0.15), axes[1] * 0.97 * math.sin(theta + 0.15))
        _bone_bar(frame, start, end, tissue, 3.0, density=0.7)
    _bone_dot(frame, (-axes[0] * 0.75, 0.0), 5.0, tissue)


def draw_femur(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> None:
    length = rng.uniform(110.0, 170.0)
    _body(frame, (0.0, 0.0), (length * 0.65, rng.uniform(24.0, 34.0)), tissue, rng)
    _bone_bar(
        frame, (-length / 2, 0.0), (length / 2, rng.uniform(-6, 6)), tissue, rng.uniform(5.0, 8.0)
    )


def draw_cervix(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> None:
    length = rng.uniform(110.0, 170.0)
    frame.ellipse((0.0, 0.0), (length * 0.7, rng.uniform(40.0, 60.0)), tissue.maternal * 1.1)
    frame.ellipse((0.0, 0.0), (length * 0.55, rng.uniform(6.0, 11.0)), tissue.maternal * 0.4)
    frame.line((-length * 0.55, 0.0), (length * 0.55, rng.uniform(-5, 5)), tissue.skin, 2)
    if rng.random() < 0.5:
        frame.ellipse((-length * 0.75, 0.0), (20.0, 26.0), tissue.fluid)


def draw_empty(frame: Frame, tissue: Tissue, rng: np.random.Generator) -> None:
    if rng.random() < 0.5:
        frame.ellipse(
            (0.0, 0.0),
            (rng.uniform(60, 140), rng.uniform(20, 50)),
            tissue.placenta,
            rotation_deg=rng.uniform(-30, 30),
        )


PLANE_DRAWERS: dict[str, Callable[[Frame, Tissue, np.random.Generator], Target | None]] = {
    "transverse": draw_transverse,
    "mid_sagittal": draw_mid_sagittal,
    "head": draw_head,
    "abdomen": draw_abdomen,
    "thorax": draw_thorax,
    "femur": draw_femur,
    "cervix": draw_cervix,
    "empty": draw_empty,
    "thighs": draw_thighs,
    "trunk_sagittal": draw_trunk_sagittal,
}


def draw_background(
    scene: Scene,
    tissue: Tissue,
    rng: np.random.Generator,
    cavity_center_xy: tuple[float, float],
    cavity_radius: float,
    with_cavity: bool = True,
) -> None:
    """Maternal tissue layers, the amniotic cavity around the fetus, and sometimes a placenta."""
    height, width = scene.echo.shape
    scene.echo[:] = tissue.maternal
    y = 0.0
    while y < height * 0.3:
        band = rng.uniform(6.0, 22.0)
        level = tissue.maternal * rng.uniform(0.5, 1.6)
        cv2.rectangle(scene.echo, (0, int(y)), (width, int(y + band)), level, -1)
        y += band
    if with_cavity:
        draw_cavity(scene, tissue, rng, cavity_center_xy, cavity_radius)


def draw_cavity(
    scene: Scene,
    tissue: Tissue,
    rng: np.random.Generator,
    center_xy: tuple[float, float],
    radius: float,
) -> None:
    """Amniotic fluid around a fetal part, its bright wall, and sometimes a placenta."""
    cx, cy = center_xy
    axes = (radius * rng.uniform(1.1, 1.6), radius * rng.uniform(0.9, 1.2))
    angle = rng.uniform(-20, 20)
    cv2.ellipse(
        scene.echo, ((cx, cy), (2 * axes[0] + 12, 2 * axes[1] + 12), angle), tissue.skin * 0.8, -1
    )
    cv2.ellipse(scene.echo, ((cx, cy), (2 * axes[0], 2 * axes[1]), angle), tissue.fluid, -1)
    if rng.random() < 0.5:
        side = rng.choice([-1.0, 1.0])
        py = cy - axes[1] * rng.uniform(0.6, 0.9)
        cv2.ellipse(
            scene.echo,
            ((cx + side * axes[0] * 0.3, py), (axes[0] * 1.4, axes[1] * 0.5), angle),
            tissue.placenta,
            -1,
        )


def add_texture(scene: Scene, rng: np.random.Generator, strength: float) -> None:
    """Vary echogenicity slowly across the scene, as real tissue does, then soften the edges."""
    height, width = scene.echo.shape
    coarse = rng.standard_normal((max(2, height // 24), max(2, width // 24))).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    scene.echo *= np.exp(strength * smooth)
    cv2.GaussianBlur(scene.echo, (0, 0), 1.2, dst=scene.echo)
    cv2.GaussianBlur(scene.bone, (0, 0), 1.0, dst=scene.bone)
