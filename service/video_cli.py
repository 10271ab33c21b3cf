"""The `video` and `evaluate-video` subcommands of `sonomask`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from service.config import HoldPolicy, Settings
from service.tracking import HoldConfig


def register(subparsers: Any) -> None:
    """Add `video` and `evaluate-video` to the `sonomask` command line."""
    _register_video(subparsers)
    _register_evaluate_video(subparsers)


def _register_video(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "video",
        help="mask a video file with the service's pipeline and a per-video tracker",
        description="Mask every frame of a video file, keeping its size and frame rate. "
        "The codec follows the output suffix (.mp4, .mov, .mkv: H.264; .webm: VP9). "
        "Audio is not copied. Model and tracking settings come from SONOMASK_* variables.",
    )
    parser.add_argument("input", type=Path, help="the video file to mask")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the masked video file")
    parser.add_argument(
        "--policy",
        choices=[policy.value for policy in HoldPolicy],
        help="hold policy (default SONOMASK_HOLD_POLICY, hold_sim)",
    )
    parser.add_argument("--report", type=Path, help="write per-frame decisions to this JSON file")
    parser.set_defaults(handler=_video)


def _video(args: argparse.Namespace) -> int:
    from service.offline import local_pipeline
    from service.video import OUTPUT_SUFFIXES, VideoInputError, mask_video

    settings = Settings()
    hold_config = HoldConfig.from_settings(settings)
    if args.policy is not None:
        hold_config = dataclasses.replace(hold_config, policy=args.policy)
    if not args.input.is_file():
        print(f"sonomask: input video not found: {args.input}", file=sys.stderr)
        return 2
    if args.input.resolve() == args.output.resolve():
        print("sonomask: the output must not overwrite the input", file=sys.stderr)
        return 2
    if args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        print(
            f"sonomask: unsupported output suffix {args.output.suffix!r}: expected one of "
            f"{', '.join(OUTPUT_SUFFIXES)}",
            file=sys.stderr,
        )
        return 2

    async def run() -> dict[str, Any]:
        async with local_pipeline(settings) as pipeline:
            report = await mask_video(
                pipeline, args.input, args.output, hold_config, show_progress=True
            )
        return report.as_dict()

    try:
        report = asyncio.run(run())
    except VideoInputError as exc:
        print(f"sonomask: {exc}", file=sys.stderr)
        return 2
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1), encoding="utf-8")
    decisions = ", ".join(f"{count} {name}" for name, count in sorted(report["decisions"].items()))
    print(
        f"masked {report['frames']} frames in {report['seconds']:.1f} s into {args.output} "
        f"({decisions})",
        file=sys.stderr,
    )
    return 1 if report["decisions"].get("blanked") else 0


def _number_list(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}"
            ) from exc

    return parse


def _context_list(text: str) -> list[float | None]:
    contexts: list[float | None] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower() == "none":
            contexts.append(None)
            continue
        try:
            contexts.append(float(item))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers or 'none', got {text!r}"
            ) from exc
    return contexts


def _register_evaluate_video(subparsers: Any) -> None:
    from service.research.video_eval import (
        DEFAULT_MAX_FRAMES,
        DEFAULT_SIM_THRESHOLDS,
        DEFAULT_SSIM_CONTEXTS,
    )

    parser = subparsers.add_parser(
        "evaluate-video",
        help="score the hold policies none, hold and hold_sim on videos with ground truth",
        description="Detect once in every NAME.mp4 of a folder that has NAME.json ground truth "
        "beside it (as `sonomask synth --videos` writes), then score each hold policy: "
        "exposure, missed and false-masked frame rates, and the reduction against none. "
        "Also sweeps the hold_sim threshold and frame cap.",
    )
    parser.add_argument("--videos", type=Path, required=True, help="folder of videos")
    parser.add_argument("--json", type=Path, required=True, help="write the scores here")
    parser.add_argument("--model", type=Path, help="model file (default SONOMASK_MODEL_PATH)")
    parser.add_argument(
        "--sim-thresholds",
        type=_number_list(float),
        default=list(DEFAULT_SIM_THRESHOLDS),
        help="SSIM thresholds to sweep, comma-separated",
    )
    parser.add_argument(
        "--max-frames",
        type=_number_list(int),
        default=list(DEFAULT_MAX_FRAMES),
        help="hold_sim frame caps to sweep, comma-separated",
    )
    parser.add_argument(
        "--ssim-contexts",
        type=_context_list,
        default=list(DEFAULT_SSIM_CONTEXTS),
        help="margins around held boxes (fractions of the box side) over which SSIM is "
        "averaged, comma-separated; 'none' means the whole frame",
    )
    parser.set_defaults(handler=_evaluate_video)


def _evaluate_video(args: argparse.Namespace) -> int:
    from service.offline import local_pipeline
    from service.research.video_eval import evaluate_videos, find_videos

    if not find_videos(args.videos):
        print(
            f"sonomask: no *.mp4 with a .json ground truth beside it in {args.videos}",
            file=sys.stderr,
        )
        return 2
    overrides = {"model_path": args.model} if args.model is not None else {}
    settings = Settings(**overrides)
    base = HoldConfig.from_settings(settings)

    async def run() -> dict[str, Any]:
        async with local_pipeline(settings) as pipeline:
            return await evaluate_videos(
                pipeline,
                args.videos,
                base,
                settings.mask_margin,
                sim_thresholds=args.sim_thresholds,
                max_frames_options=args.max_frames,
                ssim_contexts=args.ssim_contexts,
            )

    result = asyncio.run(run())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")

    print(f"{'policy':<22} {'exposure':>9} {'missed':>8} {'false-masked':>13} {'reduction':>10}")
    for name, entry in result["policies"].items():
        reduction = entry["exposure_reduction"]
        shown = "-" if reduction is None or name == "none" else f"{reduction:.0%}"
        print(
            f"{name:<22} {entry['exposure_rate']:>9.1%} {entry['missed_rate']:>8.1%} "
            f"{entry['false_masked_rate']:>13.1%} {shown:>10}"
        )
    choice = result.get("choice")
    if choice:
        print(
            f"selected hold_sim: threshold {choice['sim_threshold']}, cap {choice['max_frames']} "
            f"frames, SSIM context {choice['ssim_context']} ({choice['reason']})"
        )
    return 0
