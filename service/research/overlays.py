"""Burned-in annotations like those of real scanners: text blocks, calipers, arrows, bars, scales.

Every string is made up at random (site names from syllables, dates, gestational ages), so no
real person, place or record appears in a phantom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from service.research.imaging import FieldOfView

_SYLLABLES = (
    "ar",
    "bel",
    "cor",
    "dan",
    "el",
    "fen",
    "gar",
    "hol",
    "is",
    "kor",
    "lun",
    "mer",
    "nor",
    "ost",
    "pel",
    "ran",
    "sol",
    "tor",
    "ul",
    "ven",
    "wes",
    "yor",
)
_SITE_KINDS = ("Clinic", "Hospital", "Imaging", "Women's Health", "Medical Centre")
_PROBES = ("C5-1", "C6-2", "C9-4", "L12-4", "L15-7", "AB2-7", "RAB6")
_COLOURS_BGR = ((235, 235, 235), (200, 200, 200), (90, 230, 240), (120, 240, 120), (250, 200, 90))


@dataclass(frozen=True)
class OverlayStyle:
    """Look of one machine's annotations, fixed per patient."""

    site_name: str
    probe_name: str
    colour_bgr: tuple[int, int, int]
    font_scale: float
    date_text: str
    gestational_age: str

    @staticmethod
    def random(rng: np.random.Generator) -> OverlayStyle:
        words = [
            "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
            for _ in range(int(rng.integers(1, 3)))
        ]
        site = " ".join(words) + " " + str(rng.choice(_SITE_KINDS))
        colour = _COLOURS_BGR[int(rng.integers(len(_COLOURS_BGR)))]
        date = (
            f"{int(rng.integers(2019, 2031))}-{int(rng.integers(1, 13)):02d}-"
            f"{int(rng.integers(1, 29)):02d}"
        )
        age = f"GA {int(rng.integers(18, 36))}w{int(rng.integers(0, 7))}d"
        return OverlayStyle(
            site_name=site,
            probe_name=str(rng.choice(_PROBES)),
            colour_bgr=colour,
            font_scale=float(rng.uniform(0.35, 0.55)),
            date_text=date,
            gestational_age=age,
        )


def _text_block(
    image: np.ndarray,
    lines: list[str],
    origin_xy: tuple[int, int],
    style: OverlayStyle,
    align_right: bool = False,
) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    x, y = origin_xy
    scale = style.font_scale * image.shape[0] / 480
    thickness = 1
    line_height = int(24 * scale) + 4
    for line in lines:
        (text_w, _), _ = cv2.getTextSize(line, font, scale, thickness)
        left = x - text_w if align_right else x
        cv2.putText(image, line, (left, y), font, scale, style.colour_bgr, thickness, cv2.LINE_AA)
        y += line_height


def _caliper(
    image: np.ndarray, rng: np.random.Generator, fov: FieldOfView, style: OverlayStyle
) -> None:
    width, height = fov.size_wh
    for _ in range(20):
        start = rng.uniform([0.15 * width, 0.2 * height], [0.85 * width, 0.85 * height])
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.08, 0.35) * min(width, height)
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        if fov.contains(np.stack([start, end]), margin01=0.05).all():
            break
    else:
        return
    size = max(3, int(min(width, height) / 80))
    for point in (start, end):
        px, py = int(point[0]), int(point[1])
        cv2.line(image, (px - size, py), (px + size, py), style.colour_bgr, 1, cv2.LINE_AA)
        cv2.line(image, (px, py - size), (px, py + size), style.colour_bgr, 1, cv2.LINE_AA)
    steps = int(length // 6)
    for i in range(1, steps, 2):
        point = start + (end - start) * i / steps
        cv2.circle(image, (int(point[0]), int(point[1])), 1, style.colour_bgr, -1)
    label = f"D{int(rng.integers(1, 4))} {length / height * 12:.2f} cm"
    _text_block(image, [label], (int(0.02 * width), int(0.9 * height)), style)


def _arrow(
    image: np.ndarray, rng: np.random.Generator, fov: FieldOfView, style: OverlayStyle
) -> None:
    width, height = fov.size_wh
    tip = rng.uniform([0.2 * width, 0.25 * height], [0.8 * width, 0.85 * height])
    angle = rng.uniform(0, 2 * math.pi)
    length = rng.uniform(0.05, 0.1) * min(width, height)
    tail = tip + length * np.array([math.cos(angle), math.sin(angle)])
    cv2.arrowedLine(
        image,
        (int(tail[0]), int(tail[1])),
        (int(tip[0]), int(tip[1])),
        style.colour_bgr,
        2,
        cv2.LINE_AA,
        tipLength=0.35,
    )


def _grey_bar(image: np.ndarray, rng: np.random.Generator, style: OverlayStyle) -> None:
    height, width = image.shape[:2]
    bar_h = int(height * rng.uniform(0.2, 0.35))
    bar_w = max(6, width // 60)
    x = int(width * 0.015) if rng.random() < 0.5 else width - bar_w - int(width * 0.015)
    y = int(height * rng.uniform(0.15, 0.25))
    ramp = np.linspace(255, 0, bar_h, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    if rng.random() < 0.4:
        hue = np.linspace(0, 120, bar_h, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
        hsv = np.stack([hue, np.full_like(hue, 255), np.full_like(hue, 230)], axis=-1)
        block = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    else:
        block = np.repeat(ramp.astype(np.uint8)[..., None], 3, axis=-1)
    image[y : y + bar_h, x : x + bar_w] = block
    cv2.rectangle(image, (x - 1, y - 1), (x + bar_w, y + bar_h), style.colour_bgr, 1)


def _depth_scale(
    image: np.ndarray, rng: np.random.Generator, fov: FieldOfView, style: OverlayStyle
) -> None:
    width, _ = fov.size_wh
    depth_cm = float(rng.choice([8.0, 10.0, 12.0, 14.0, 16.0, 18.0]))
    if fov.kind == "convex":
        top = fov.apex_xy[1] + fov.radius_px[0]
        bottom = fov.apex_xy[1] + fov.radius_px[1]
        right = fov.apex_xy[0] + fov.radius_px[1] * math.sin(fov.half_angle_rad)
    else:
        top, bottom = fov.span_y
        right = fov.span_x[1]
    x = int(min(width - 12, right + 8))
    px_per_cm = (bottom - top) / depth_cm
    for cm in range(int(depth_cm) + 1):
        y = int(top + cm * px_per_cm)
        tick = 6 if cm % 5 == 0 else 3
        cv2.line(image, (x, y), (x + tick, y), style.colour_bgr, 1)
        if cm % 5 == 0 and cm > 0 and x + 10 < width - 14:
            cv2.putText(
                image,
                str(cm),
                (x + 8, y + 4),
                cv2.FONT_HERSHEY_SIMPLEX,
                style.font_scale * 0.8,
                style.colour_bgr,
                1,
                cv2.LINE_AA,
            )


def draw_overlays(
    image_bgr: np.ndarray,
    rng: np.random.Generator,
    fov: FieldOfView,
    style: OverlayStyle,
    frame_rate_hz: int | None = None,
) -> None:
    """Burn annotations into `image_bgr` in place; which ones appear is random."""
    height, width = image_bgr.shape[:2]

    margin = int(0.02 * width)
    line_y = int(0.05 * height) + 6
    time_text = f"{int(rng.integers(7, 19)):02d}:{int(rng.integers(0, 60)):02d}"
    _text_block(
        image_bgr, [style.site_name, f"{style.date_text} {time_text}"], (margin, line_y), style
    )

    if rng.random() < 0.9:
        gain = int(rng.integers(30, 80))
        rate = frame_rate_hz or int(rng.integers(12, 40))
        _text_block(
            image_bgr,
            [
                style.probe_name,
                f"FR {rate}Hz",
                f"D {rng.uniform(8, 18):.1f}cm",
                f"G {gain}%",
                f"DR {int(rng.integers(45, 75))}",
            ],
            (width - margin, line_y),
            style,
            align_right=True,
        )

    if rng.random() < 0.7:
        _text_block(
            image_bgr,
            [style.gestational_age, f"MI {rng.uniform(0.5, 1.4):.1f}"],
            (margin, int(0.78 * height)),
            style,
        )

    if rng.random() < 0.7:
        _grey_bar(image_bgr, rng, style)
    if rng.random() < 0.8:
        _depth_scale(image_bgr, rng, fov, style)
    if rng.random() < 0.35:
        _caliper(image_bgr, rng, fov, style)
    if rng.random() < 0.25:
        _arrow(image_bgr, rng, fov, style)
