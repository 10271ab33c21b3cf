"""Hold-policy scoring with scripted detections, and `sonomask evaluate-video` on a phantom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service import cli
from service.research.phantoms import write_video
from service.research.video_eval import (
    DetectedVideo,
    VideoTruth,
    covered_share,
    evaluate,
    replay,
    score_video,
)
from service.tracking import HoldConfig, small_grey

TRUE_BOX = (100.0, 100.0, 140.0, 140.0)
SIZE_WH = (320, 240)


def scripted_video(detections, true_boxes, *, scene_cut_at: int | None = None) -> DetectedVideo:
    """A video whose frames are one still image, or a second one from `scene_cut_at` on."""
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8) for _ in range(2)]
    greys = []
    for index in range(len(detections)):
        scene = scenes[1] if scene_cut_at is not None and index >= scene_cut_at else scenes[0]
        greys.append(small_grey(scene, 160))
    truth = VideoTruth(25.0, SIZE_WH, true_boxes)
    return DetectedVideo("scripted", truth, detections, greys)


def test_covered_share_full_partial_and_margin() -> None:
    assert covered_share(TRUE_BOX, [TRUE_BOX], 0.0, SIZE_WH) == 1.0
    assert covered_share(TRUE_BOX, [(100.0, 100.0, 120.0, 140.0)], 0.0, SIZE_WH) == 0.5
    assert covered_share(TRUE_BOX, [], 0.0, SIZE_WH) == 0.0
    # A box a quarter too small on each side is covered once grown by a 0.5 margin.
    assert covered_share(TRUE_BOX, [(110.0, 110.0, 130.0, 130.0)], 0.5, SIZE_WH) == 1.0


def test_score_counts_each_frame_kind() -> None:
    truth = VideoTruth(25.0, SIZE_WH, [[TRUE_BOX], [TRUE_BOX], [TRUE_BOX], [], [], [TRUE_BOX]])
    masks = [(TRUE_BOX,), (), ((100.0, 100.0, 110.0, 110.0),), (), (TRUE_BOX,), None]

    score = score_video(truth, masks, margin=0.0)

    assert score.target_frames == 4
    assert score.missed_frames == 1
    assert score.exposed_frames == 2
    assert score.free_frames == 2
    assert score.false_masked_frames == 1


def test_replay_holds_through_misses() -> None:
    detections = [(TRUE_BOX,), (), (), (TRUE_BOX,), ()]
    video = scripted_video(detections, [[TRUE_BOX]] * 5)

    none_masks = replay(video, HoldConfig(policy="none"))
    hold_masks = replay(video, HoldConfig(policy="hold", hold_frames=2))

    assert none_masks == [(TRUE_BOX,), (), (), (TRUE_BOX,), ()]
    assert hold_masks == [(TRUE_BOX,)] * 5


def test_replay_rejects_other_ssim_width() -> None:
    video = scripted_video([(TRUE_BOX,)], [[TRUE_BOX]])
    with pytest.raises(ValueError, match="ssim_width: expected 160"):
        replay(video, HoldConfig(ssim_width=96))


def test_evaluate_ranks_policies_and_selects() -> None:
    # The detector finds the target on every third frame. From frame 30 on the scene changes
    # and no target is left, so a hold that ignores the picture masks target-free frames.
    detections = [(TRUE_BOX,) if i % 3 == 0 and i < 30 else () for i in range(60)]
    true_boxes = [[TRUE_BOX] if i < 30 else [] for i in range(60)]
    video = scripted_video(detections, true_boxes, scene_cut_at=30)
    base = HoldConfig(hold_frames=10, union_frames=0)

    evaluation = evaluate(
        [video],
        base,
        0.0,
        sim_thresholds=(0.5, 0.9),
        max_frames_options=(1, 5),
        ssim_contexts=(None,),
    )

    none, hold, hold_sim = (evaluation.policies[p] for p in ("none", "hold", "hold_sim"))
    assert none["exposure_rate"] == pytest.approx(20 / 30, abs=1e-4)
    assert none["false_masked_rate"] == 0.0
    assert hold["exposure_rate"] == 0.0
    assert hold["false_masked_rate"] == pytest.approx(8 / 30, abs=1e-4)
    assert hold_sim["exposure_rate"] == 0.0
    assert hold_sim["exposure_reduction"] == 1.0
    assert hold_sim["added_false_masked_rate"] == 0.0
    assert len(evaluation.sweep) == 4
    assert evaluation.choice["sim_threshold"] == 0.9
    assert evaluation.choice["max_frames"] == 5
    assert evaluation.choice["exposure_rate"] == 0.0


def test_evaluate_video_command_writes_scores(
    tmp_path: Path, untrained_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    videos = tmp_path / "videos"
    write_video(videos / "sweep.mp4", seed=31, n_frames=20, size_wh=(320, 240), fps=25.0)
    output = tmp_path / "scores.json"

    code = cli.main(
        [
            "evaluate-video",
            "--videos",
            str(videos),
            "--json",
            str(output),
            "--model",
            str(untrained_model_path),
            "--sim-thresholds",
            "0.5",
            "--max-frames",
            "30",
            "--ssim-contexts",
            "none,0.5",
        ]
    )

    assert code == 0
    result = json.loads(output.read_text())
    assert result["videos"] == ["sweep"]
    assert result["frames"] == 20
    assert set(result["policies"]) == {"none", "hold", "hold_sim", "hold_sim_whole_frame"}
    assert len(result["sweep"]) == 2
    assert [entry["config"]["ssim_context"] for entry in result["sweep"]] == [None, 0.5]
    # The untrained model finds nothing, so every target frame is missed.
    assert result["policies"]["none"]["missed_rate"] == 1.0


def test_evaluate_video_command_needs_videos(
    tmp_path: Path, untrained_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "evaluate-video",
            "--videos",
            str(tmp_path),
            "--json",
            str(tmp_path / "out.json"),
            "--model",
            str(untrained_model_path),
        ]
    )

    assert code == 2
    assert "no *.mp4 with a .json ground truth" in capsys.readouterr().err


def test_replay_local_ssim_in_frame_coordinates() -> None:
    # Only the area around the box stays the same; SSIM there must be read at the box's
    # place in the small copy, which is a quarter of the 640 px frame's size.
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    second = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    second[160:320, 360:560] = first[160:320, 360:560]
    box = (420.0, 200.0, 500.0, 280.0)
    video = DetectedVideo(
        "local",
        VideoTruth(25.0, (640, 480), [[box], [box]]),
        [(box,), ()],
        [small_grey(first, 160), small_grey(second, 160)],
    )

    masks = replay(video, HoldConfig(policy="hold_sim", ssim_context=0.5, sim_threshold=0.9))

    assert masks == [(box,), (box,)]


def test_evaluate_tie_keeps_cap_nearest_current() -> None:
    detections = [(TRUE_BOX,) if i % 3 == 0 and i < 30 else () for i in range(60)]
    true_boxes = [[TRUE_BOX] if i < 30 else [] for i in range(60)]
    video = scripted_video(detections, true_boxes, scene_cut_at=30)
    base = HoldConfig(max_frames=30, union_frames=0)

    evaluation = evaluate(
        [video],
        base,
        0.0,
        sim_thresholds=(0.9,),
        max_frames_options=(10, 40),
        ssim_contexts=(None,),
    )

    # Both caps outlast every two-frame gap, so they score the same.
    assert evaluation.sweep[0]["exposure_rate"] == evaluation.sweep[1]["exposure_rate"]
    assert evaluation.choice["max_frames"] == 40
