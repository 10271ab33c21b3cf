"""`sonomask video` and `mask_video` on phantom sweeps written as real H.264 files."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from service import cli
from service.config import Settings
from service.offline import local_pipeline
from service.research.phantoms import write_video
from service.tracking import HoldConfig, Tracker
from service.video import VideoClockTracker, VideoInputError, mask_video, probe_video

BOX = (40.0, 40.0, 80.0, 80.0)


def read_back(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    return write_video(folder / "sweep.mp4", seed=21, n_frames=30, size_wh=(320, 240), fps=20.0)


def test_video_command_keeps_count_size_and_rate(
    sweep: Path, tmp_path: Path, untrained_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SONOMASK_MODEL_PATH", str(untrained_model_path))
    output = tmp_path / "masked.mp4"
    report_path = tmp_path / "report.json"

    code = cli.main(["video", str(sweep), "-o", str(output), "--report", str(report_path)])

    assert code == 0
    size_wh, fps, _ = probe_video(output)
    assert size_wh == (320, 240)
    assert fps == 20
    assert len(read_back(output)) == 30
    report = json.loads(report_path.read_text())
    assert report["frames"] == 30
    assert report["decisions"] == {"clear": 30}
    assert report["hold_config"]["policy"] == "hold_sim"
    assert [frame["index"] for frame in report["per_frame"]] == list(range(30))


def test_video_command_policy_option(
    sweep: Path, tmp_path: Path, untrained_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SONOMASK_MODEL_PATH", str(untrained_model_path))
    report_path = tmp_path / "report.json"

    code = cli.main(
        [
            "video",
            str(sweep),
            "-o",
            str(tmp_path / "out.mkv"),
            "--policy",
            "none",
            "--report",
            str(report_path),
        ]
    )

    assert code == 0
    assert json.loads(report_path.read_text())["hold_config"]["policy"] == "none"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["video", "missing.mp4", "-o", "out.mp4"], "input video not found"),
        (["video", "SWEEP", "-o", "out.avi"], "unsupported output suffix '.avi'"),
        (["video", "SWEEP", "-o", "SWEEP"], "must not overwrite the input"),
    ],
)
def test_video_command_rejects_bad_paths(
    sweep: Path,
    tmp_path: Path,
    untrained_model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("SONOMASK_MODEL_PATH", str(untrained_model_path))
    monkeypatch.chdir(tmp_path)
    arguments = [str(sweep) if a == "SWEEP" else a for a in arguments]

    code = cli.main(arguments)

    assert code == 2
    assert message in capsys.readouterr().err


async def test_failed_detector_blanks_every_frame(
    sweep: Path, tmp_path: Path, faulty_detector
) -> None:
    faulty_detector.fault = "raise"
    output = tmp_path / "blanked.mp4"
    async with local_pipeline(Settings(max_wait_ms=1.0), detector=faulty_detector) as pipeline:
        report = await mask_video(pipeline, sweep, output, HoldConfig())

    frames = read_back(output)
    assert report.decisions == {"blanked": 30}
    assert len(frames) == 30
    for frame in frames:
        # Black apart from the notice text.
        assert (frame.max(axis=2) < 40).mean() > 0.9


async def test_unreadable_input_raises(tmp_path: Path, faulty_detector) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    async with local_pipeline(Settings(), detector=faulty_detector) as pipeline:
        with pytest.raises(VideoInputError, match="cannot open"):
            await mask_video(pipeline, broken, tmp_path / "out.mp4", HoldConfig())


def test_video_clock_caps_hold_in_video_time() -> None:
    tracker = VideoClockTracker(Tracker(HoldConfig(policy="hold_sim", max_s=0.1)))
    frame = np.full((120, 160, 3), 90, dtype=np.uint8)
    frame[30:90, 40:120] = 200

    decisions = []
    for index, boxes in enumerate([[BOX], [], [], [], []]):
        tracker.video_time_s = index * 0.04
        # The wall-clock argument is ignored: only video time counts.
        decisions.append(tracker.update(frame, boxes, now_s=1000.0).decision.value)

    assert decisions == ["masked", "held", "held", "clear", "clear"]


@pytest.mark.parametrize("clip", ["low-frame-count.mov", "odd-window-size.mov"])
async def test_real_clip_keeps_count_size_and_rate(
    shared_data: Path, tmp_path: Path, untrained_model_path: Path, clip: str
) -> None:
    source = shared_data / "video" / clip
    if not source.is_file():
        pytest.skip(f"real clip not found: {source}")
    output = tmp_path / "masked.mp4"
    settings = Settings(model_path=untrained_model_path, max_wait_ms=1.0)
    async with local_pipeline(settings) as pipeline:
        report = await mask_video(pipeline, source, output, HoldConfig())

    size_wh, fps, _ = probe_video(source)
    assert probe_video(output)[:2] == (size_wh, fps)
    assert report.frames == len(read_back(source))
    assert len(read_back(output)) == report.frames
    assert report.decisions == {"clear": report.frames}


def test_video_command_covers_phantom_targets(
    tmp_path: Path, default_model_path: Path, monkeypatch: pytest.MonkeyPatch, covered_fraction
) -> None:
    # A sweep on which the shipped model finds the target in most frames.
    source = write_video(tmp_path / "sweep.mp4", seed=31, n_frames=60, size_wh=(320, 240))
    monkeypatch.setenv("SONOMASK_MODEL_PATH", str(default_model_path))
    output = tmp_path / "masked.mp4"
    report_path = tmp_path / "report.json"

    code = cli.main(["video", str(source), "-o", str(output), "--report", str(report_path)])

    assert code == 0
    originals = read_back(source)
    masked = read_back(output)
    truth = json.loads(source.with_suffix(".json").read_text())["frames"]
    records = json.loads(report_path.read_text())["per_frame"]
    assert len(masked) == len(originals) == 60
    covered = 0
    for record, frame, original, frame_truth in zip(records, masked, originals, truth, strict=True):
        if record["decision"] in ("masked", "held"):
            for x1, y1, x2, y2 in record["boxes_xyxy"]:
                inside = frame[round(y1) + 1 : round(y2) - 1, round(x1) + 1 : round(x2) - 1]
                assert inside.max() < 30
        for box in frame_truth["boxes"]:
            covered += covered_fraction(frame, original, box["box_xyxy"]) >= 0.95
    assert covered >= 20
