"""Write the labelled phantom frame that the service's start-up self-test runs on.

Renders candidate phantom stills with a target and keeps the one every CPU backend of the
shipped model finds most surely, so the self-test checks the model without being flaky.
Run it again whenever the shipped model changes:

    .venv/bin/python scripts/make_selftest_frame.py
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2

from service.config import DEFAULT_MODEL_PATH, Backend, Settings
from service.detection.loading import load_detector
from service.research.phantoms import render_still
from service.selftest import DEFAULT_SELFTEST_IMAGE, MIN_IOU, iou_xyxy

SIZE_WH = (640, 480)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=40, help="phantom stills to try")
    parser.add_argument("--first-seed", type=int, default=424_200, help="seed of the first still")
    parser.add_argument("--out", type=Path, default=DEFAULT_SELFTEST_IMAGE, help="PNG to write")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")

    detectors = [
        load_detector(Settings(model_path=DEFAULT_MODEL_PATH, backend=backend, device="cpu"))
        for backend in (Backend.TORCH, Backend.ONNX)
    ]
    best: tuple[float, int, str] | None = None
    for offset in range(args.candidates):
        seed = args.first_seed + offset
        plane = "transverse" if offset % 2 == 0 else "mid_sagittal"
        still = render_still(seed, plane, size_wh=SIZE_WH)
        target = still.boxes[0][1]
        # The weakest backend's confidence in a box on the target decides.
        scores = []
        for detector in detectors:
            found = detector.predict([still.image_bgr])[0]
            on_target = [d.confidence for d in found if iou_xyxy(d.box_xyxy, target) >= 2 * MIN_IOU]
            scores.append(max(on_target, default=0.0))
        score = min(scores)
        if best is None or score > best[0]:
            best = (score, seed, plane)

    assert best is not None
    score, seed, plane = best
    if score == 0.0:
        print("no candidate was found by every backend; try more --candidates")
        return 1
    still = render_still(seed, plane, size_wh=SIZE_WH)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), still.image_bgr)
    label = {
        "box_xyxy": [round(v, 1) for v in still.boxes[0][1]],
        "class_id": still.boxes[0][0],
        "plane": plane,
        "rendered_by": f"render_still({seed}, {plane!r}, size_wh={SIZE_WH})",
        "weakest_backend_confidence": round(score, 3),
    }
    args.out.with_suffix(".json").write_text(json.dumps(label, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} from seed {seed} ({plane}), weakest backend confidence {score:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
