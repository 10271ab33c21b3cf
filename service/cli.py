"""The `sonomask` command: serve the API, mask files, and the model and video tools."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from service.config import MaskStyle, Settings
from service.logs import configure_logging

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}
DICOM_SUFFIXES = {".dcm", ".dicom"}

Registrar = Callable[[Any], None]


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"sonomask: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_lines=settings.log_json)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonomask",
        description="Masks the fetal genital region in obstetric ultrasound. Settings come from "
        "SONOMASK_* environment variables; see the README.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(subparsers)
    _add_mask(subparsers)
    for register in _optional_registrars():
        register(subparsers)
    return parser


def _optional_registrars() -> Iterator[Registrar]:
    """Commands of the research and video tools, which live beside the service."""
    import importlib

    for module_name in ("service.research.commands", "service.video_cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        yield module.register


# serve


def _add_serve(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP and WebRTC service")
    serve.add_argument("--host", help="address to bind (default SONOMASK_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default SONOMASK_PORT, 8000)")
    serve.add_argument("--workers", type=int, default=1, help="processes; each loads the model")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = Settings(**overrides)
    if (
        not settings.all_api_keys()
        and not settings.host_is_loopback()
        and not settings.allow_public_without_keys
    ):
        print(
            f"sonomask: refusing to listen on {settings.host} without API keys: set "
            "SONOMASK_API_KEYS or SONOMASK_API_KEYS_FILE, or set "
            "SONOMASK_ALLOW_PUBLIC_WITHOUT_KEYS=true to accept unauthenticated clients",
            file=sys.stderr,
        )
        return 2

    from service.app import create_app

    logger.info("starting on %s:%d", settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level=settings.log_level.lower(),
        limit_concurrency=settings.max_concurrent_requests,
    )
    return 0


# mask


def _add_mask(subparsers: Any) -> None:
    mask = subparsers.add_parser(
        "mask", help="mask image and DICOM files or folders with the same pipeline as the service"
    )
    mask.add_argument(
        "inputs", nargs="+", type=Path, help="files or folders (searched recursively)"
    )
    mask.add_argument("--out", "-o", type=Path, required=True, help="folder for the masked files")
    mask.add_argument("--report", type=Path, help="write per-file detections to this JSON file")
    mask.add_argument(
        "--style", choices=[s.value for s in MaskStyle], help="mask style (at least the server's)"
    )
    mask.add_argument("--margin", type=float, help="margin as a fraction of the box side")
    mask.set_defaults(handler=_mask)


def _collect_inputs(inputs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every supported file."""
    suffixes = set(IMAGE_SUFFIXES) | DICOM_SUFFIXES
    found = []
    for root in inputs:
        if root.is_file():
            found.append((root, Path(root.name)))
        elif root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.suffix.lower() in suffixes:
                    found.append((path, path.relative_to(root)))
        else:
            raise FileNotFoundError(f"input not found: {root}")
    return found


def _mask(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        files = _collect_inputs(args.inputs)
    except FileNotFoundError as exc:
        print(f"sonomask: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("sonomask: no .jpg, .png or .dcm files in the inputs", file=sys.stderr)
        return 2
    from service.offline import mask_files

    report = asyncio.run(
        mask_files(files, args.out, settings, style=args.style, margin=args.margin)
    )
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2), encoding="utf-8")
    failed = sum(1 for entry in report["files"] if entry.get("error"))
    print(
        f"masked {len(files) - failed} of {len(files)} files in {report['seconds']:.1f} s "
        f"into {args.out}",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
