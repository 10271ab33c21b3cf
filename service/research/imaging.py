"""B-mode image formation for phantoms: field of view, speckle, attenuation, shadows, log scale.

A scene is a map of echogenicity and a map of acoustic obstruction (bone), in image pixels.
Echogenicity is 0 for fluid, about 0.3 for soft tissue and 1 for a strong interface, and
`form_bmode` cubes it into backscatter power. `form_bmode` samples both along the beams of a
convex or linear probe, forms the echo envelope there, and scan-converts it back to the image.
Working in beam coordinates makes shadows (attenuation accumulated along each beam) and the
axial grain of speckle follow the probe geometry as they do on a scanner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

ProbeKind = Literal["convex", "linear"]


@dataclass(frozen=True)
class FieldOfView:
    """The imaged region of a probe in image pixels.

    Convex probes image an annulus sector around a virtual apex (`apex_xy`, radii `radius_px`,
    half opening angle `half_angle_rad`, zero angle pointing down the image). Linear probes image
    the rectangle `span_x` × `span_y`.
    """

    kind: ProbeKind
    size_wh: tuple[int, int]
    apex_xy: tuple[float, float] = (0.0, 0.0)
    radius_px: tuple[float, float] = (0.0, 0.0)
    half_angle_rad: float = 0.0
    span_x: tuple[float, float] = (0.0, 0.0)
    span_y: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.kind == "convex":
            if not 0.0 <= self.radius_px[0] < self.radius_px[1]:
                raise ValueError(f"convex radii must satisfy 0 <= r0 < r1, got {self.radius_px}")
            if not 0.0 < self.half_angle_rad < math.pi / 2:
                raise ValueError(f"half angle must be in (0, pi/2), got {self.half_angle_rad}")
        elif self.kind == "linear":
            if self.span_x[0] >= self.span_x[1] or self.span_y[0] >= self.span_y[1]:
                raise ValueError(
                    f"linear spans must be increasing, got {self.span_x} {self.span_y}"
                )
        else:
            raise ValueError(f"probe kind must be 'convex' or 'linear', got {self.kind!r}")

    @property
    def depth_px(self) -> float:
        if self.kind == "convex":
            return self.radius_px[1] - self.radius_px[0]
        return self.span_y[1] - self.span_y[0]

    def beam_to_image(self, depth01: np.ndarray, lateral01: np.ndarray) -> np.ndarray:
        """Map beam coordinates (depth and lateral position, both 0..1) to image x, y."""
        if self.kind == "convex":
            radius = self.radius_px[0] + depth01 * (self.radius_px[1] - self.radius_px[0])
            angle = (lateral01 * 2.0 - 1.0) * self.half_angle_rad
            x = self.apex_xy[0] + radius * np.sin(angle)
            y = self.apex_xy[1] + radius * np.cos(angle)
        else:
            x = self.span_x[0] + lateral01 * (self.span_x[1] - self.span_x[0])
            y = self.span_y[0] + depth01 * (self.span_y[1] - self.span_y[0])
        return np.stack([x, y], axis=-1)

    def image_to_beam(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map image x, y to beam coordinates (depth01, lateral01); outside is outside 0..1."""
        if self.kind == "convex":
            dx = x - self.apex_xy[0]
            dy = y - self.apex_xy[1]
            radius = np.hypot(dx, dy)
            angle = np.arctan2(dx, dy)
            depth01 = (radius - self.radius_px[0]) / (self.radius_px[1] - self.radius_px[0])
            lateral01 = (angle / self.half_angle_rad + 1.0) / 2.0
        else:
            depth01 = (y - self.span_y[0]) / (self.span_y[1] - self.span_y[0])
            lateral01 = (x - self.span_x[0]) / (self.span_x[1] - self.span_x[0])
        return depth01, lateral01

    def contains(self, points_xy: np.ndarray, margin01: float = 0.0) -> np.ndarray:
        """Test which points (N×2) lie inside the field, at least `margin01` in from its edges."""
        points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        depth01, lateral01 = self.image_to_beam(points[:, 0], points[:, 1])
        low, high = margin01, 1.0 - margin01
        return (depth01 >= low) & (depth01 <= high) & (lateral01 >= low) & (lateral01 <= high)

    def mask(self) -> np.ndarray:
        """Boolean H×W mask of the pixels inside the field."""
        width, height = self.size_wh
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        depth01, lateral01 = self.image_to_beam(xs, ys)
        return (depth01 >= 0) & (depth01 <= 1) & (lateral01 >= 0) & (lateral01 <= 1)


def random_field_of_view(rng: np.random.Generator, size_wh: tuple[int, int]) -> FieldOfView:
    """Draw a convex sector (70 %) or a linear field of varied depth and width inside the image."""
    width, height = size_wh
    top_y = height * rng.uniform(0.04, 0.10)
    bottom_y = height * rng.uniform(0.90, 0.98)
    if rng.random() < 0.7:
        half_angle = math.radians(rng.uniform(28.0, 42.0))
        inner_radius = height * rng.uniform(0.05, 0.18)
        apex_y = top_y - inner_radius
        outer_radius = bottom_y - apex_y
        max_outer = (width * rng.uniform(0.44, 0.49)) / math.sin(half_angle)
        outer_radius = min(outer_radius, max_outer)
        apex_x = width / 2 + rng.uniform(-0.03, 0.03) * width
        return FieldOfView(
            kind="convex",
            size_wh=size_wh,
            apex_xy=(apex_x, apex_y),
            radius_px=(inner_radius, outer_radius),
            half_angle_rad=half_angle,
        )
    field_width = width * rng.uniform(0.5, 0.8)
    left = (width - field_width) / 2 + rng.uniform(-0.05, 0.05) * width
    return FieldOfView(
        kind="linear",
        size_wh=size_wh,
        span_x=(left, left + field_width),
        span_y=(top_y, bottom_y),
    )


@dataclass(frozen=True)
class ImagingParams:
    """Per-acquisition settings of the simulated scanner."""

    gain_db: float = 0.0
    dynamic_range_db: float = 45.0
    attenuation_np: float = 1.6  # amplitude loss over the full depth, in nepers
    tgc_fraction: float = 0.8  # share of the attenuation the time-gain compensation restores
    speckle_sigma_axial: float = 1.6  # grain size along the beam, in beam samples
    speckle_sigma_lateral: float = 1.0
    shadow_strength: float = 3.0
    specular_gain: float = 4.0
    noise_floor: float = 0.006
    contrast_gamma: float = 1.0

    @staticmethod
    def random(rng: np.random.Generator) -> ImagingParams:
        return ImagingParams(
            gain_db=float(rng.uniform(-4.0, 4.0)),
            dynamic_range_db=float(rng.uniform(38.0, 52.0)),
            attenuation_np=float(rng.uniform(0.8, 2.4)),
            tgc_fraction=float(rng.uniform(0.6, 0.95)),
            speckle_sigma_axial=float(rng.uniform(1.2, 2.2)),
            speckle_sigma_lateral=float(rng.uniform(0.7, 1.3)),
            shadow_strength=float(rng.uniform(2.0, 4.5)),
            specular_gain=float(rng.uniform(2.0, 6.0)),
            noise_floor=float(rng.uniform(0.003, 0.012)),
            contrast_gamma=float(rng.uniform(0.85, 1.2)),
        )


class BeamGrid:
    """Sampling maps between a field of view and its beam grid, computed once per geometry."""

    def __init__(self, fov: FieldOfView, n_depth: int, n_beams: int) -> None:
        self.fov = fov
        self.n_depth = n_depth
        self.n_beams = n_beams
        depth01 = (np.arange(n_depth, dtype=np.float32) + 0.5) / n_depth
        lateral01 = (np.arange(n_beams, dtype=np.float32) + 0.5) / n_beams
        grid_depth, grid_lateral = np.meshgrid(depth01, lateral01, indexing="ij")
        self.beam_xy = fov.beam_to_image(grid_depth, grid_lateral).astype(np.float32)

        width, height = fov.size_wh
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        image_depth01, image_lateral01 = fov.image_to_beam(xs, ys)
        self.image_map_x = (image_lateral01 * n_beams - 0.5).astype(np.float32)
        self.image_map_y = (image_depth01 * n_depth - 0.5).astype(np.float32)
        self.inside = (
            (image_depth01 >= 0)
            & (image_depth01 <= 1)
            & (image_lateral01 >= 0)
            & (image_lateral01 <= 1)
        )


def beam_grid_for(fov: FieldOfView) -> BeamGrid:
    """Choose a beam grid about as fine as the image and build its maps."""
    n_depth = max(32, int(fov.depth_px * 0.75))
    if fov.kind == "convex":
        arc_px = fov.radius_px[1] * 2 * fov.half_angle_rad
    else:
        arc_px = fov.span_x[1] - fov.span_x[0]
    n_beams = max(32, int(arc_px * 0.5))
    return BeamGrid(fov, n_depth, n_beams)


def complex_speckle(
    rng: np.random.Generator, shape: tuple[int, int], params: ImagingParams
) -> np.ndarray:
    """Circular complex Gaussian scatter field, low-passed so its grain has the set size.

    Its magnitude is Rayleigh distributed with unit mean power.
    """
    field = rng.standard_normal((2, *shape), dtype=np.float32)
    for part in field:
        cv2.GaussianBlur(
            part,
            (0, 0),
            sigmaX=params.speckle_sigma_lateral,
            sigmaY=params.speckle_sigma_axial,
            dst=part,
        )
    power = float(np.mean(field[0] ** 2 + field[1] ** 2))
    return field / math.sqrt(max(power, 1e-12))


def evolve_speckle(
    rng: np.random.Generator, previous: np.ndarray, params: ImagingParams, correlation: float
) -> np.ndarray:
    """Decorrelate a speckle field partly, as between two frames of a slowly moving probe."""
    fresh = complex_speckle(rng, previous.shape[1:], params)
    keep = float(np.clip(correlation, 0.0, 1.0))
    return keep * previous + math.sqrt(1.0 - keep * keep) * fresh


def form_bmode(
    echo: np.ndarray,
    bone: np.ndarray,
    grid: BeamGrid,
    params: ImagingParams,
    speckle: np.ndarray,
    *,
    scene_to_image: np.ndarray | None = None,
    beam_shadow: np.ndarray | None = None,
    motion_blur_px: float = 0.0,
) -> np.ndarray:
    """Image a scene and return a grey uint8 H×W B-mode picture, black outside the field.

    `echo` and `bone` are float32 maps in scene pixels. `scene_to_image` (2×3 affine) places the
    scene in the image, identity when None. `beam_shadow` (n_beams) adds an attenuation per beam,
    as a rib or a lifted probe edge would.
    """
    map_xy = grid.beam_xy
    if scene_to_image is not None:
        image_to_scene = cv2.invertAffineTransform(scene_to_image.astype(np.float64))
        flat = map_xy.reshape(-1, 2).astype(np.float64)
        map_xy = (flat @ image_to_scene[:, :2].T + image_to_scene[:, 2]).astype(np.float32)
        map_xy = map_xy.reshape(grid.n_depth, grid.n_beams, 2)
    echo_beam = cv2.remap(echo, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR)
    bone_beam = cv2.remap(bone, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR)

    # Specular reflection: strong echo at the near side of each step up in echogenicity.
    step_up = np.diff(echo_beam, axis=0, prepend=echo_beam[:1])
    echo_beam = echo_beam + params.specular_gain * np.maximum(step_up, 0.0) ** 1.5

    # Shadow: each sample receives what the obstruction above it on the same beam lets through.
    obstruction = np.cumsum(bone_beam, axis=0) - bone_beam
    scale = params.shadow_strength * 24.0 / grid.n_depth
    transmission = np.exp(-scale * obstruction)
    if beam_shadow is not None:
        transmission = transmission * np.exp(-beam_shadow)[None, :]

    depth01 = ((np.arange(grid.n_depth, dtype=np.float32) + 0.5) / grid.n_depth)[:, None]
    residual_np = params.attenuation_np * (1.0 - params.tgc_fraction)
    depth_gain = np.exp(-residual_np * depth01)
    # Scene values read like brightness. Cubing spreads them over the decibel range of a scanner:
    # soft tissue ends up about 15 dB under a strong interface, and fluid 50 dB or more under it.
    power = np.maximum(echo_beam, 0.0) ** 3
    amplitude = np.sqrt(power * transmission) * depth_gain
    envelope = amplitude * np.hypot(speckle[0], speckle[1])
    envelope = envelope + params.noise_floor * np.abs(speckle[1][::-1, ::-1])

    if motion_blur_px > 0.5:
        size = round(motion_blur_px) | 1
        envelope = cv2.blur(envelope, (size, 1))

    level_db = 20.0 * np.log10(envelope + 1e-6) + params.gain_db
    grey01 = np.clip((level_db + params.dynamic_range_db - 3.0) / params.dynamic_range_db, 0, 1)
    grey01 = grey01**params.contrast_gamma
    beam_u8 = (grey01 * 255.0).astype(np.float32)

    image = cv2.remap(
        beam_u8,
        grid.image_map_x,
        grid.image_map_y,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    image[~grid.inside] = 0
    return np.clip(image, 0, 255).astype(np.uint8)
