"""Run every benchmark once on one image set and report the ratios against their targets.

    python -m bench.run            # about five minutes on 2 CPU cores
    python -m bench.run --quick    # shorter phases, for a smoke check

Steps:
(a) per-image model time of each available backend at batch 1 and 8, each in its own process;
(b) `/v1/mask` on the real app under uvicorn in a subprocess: latency at concurrency 1,
    throughput at 8 and 32;
(c) the same load on the plain FastAPI server in `bench/plain_server.py`;
(d) the WebRTC stream benchmark in `bench/bench_streams.py`, when it exists;
and the SSIM check that the stream tracker runs on each frame it may hold.
Results go to bench/results/latest.json, a line in bench/results/history.jsonl and the
plot bench/results/benchmarks.png.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.dev_model import resolve_model
from bench.http_load import ServerProcess, run_load, run_server
from bench.images import REPO_ROOT, ImageSet, load_image_set
from bench.model_times import BACKENDS
from bench.stages import time_stages

RESULTS_DIR = REPO_ROOT / "bench" / "results"
STREAMS_SCRIPT = REPO_ROOT / "bench" / "bench_streams.py"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    started = datetime.now(UTC)
    environment = describe_environment()
    image_set = load_image_set(args.images)
    model, trained = resolve_model(args.model)
    print(f"images: {image_set.source}, {len(image_set.images)} at {image_set.size_wh}")
    print(f"model: {model} ({'trained' if trained else 'untrained stand-in'})")

    backends = args.backends or available_backends(model, args.device)
    models = {backend: time_model(backend, model, args) for backend in backends}
    ssim = measure_ssim(image_set)
    stages = time_stages(image_set)
    rest = benchmark_sonomask(model, image_set, args)
    plain = None if args.skip_plain else benchmark_plain(model, image_set, args)
    streams = None if args.skip_streams else run_streams_benchmark(model, args)
    environment["load_average_after"] = os.getloadavg()

    results = {
        "started_utc": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "environment": environment,
        "images": {"source": image_set.source, "count": len(image_set.images)},
        "model": {
            "path": str(model.relative_to(REPO_ROOT) if model.is_relative_to(REPO_ROOT) else model),
            "trained": trained,
        },
        "models": models,
        "ssim": ssim,
        "stages": stages,
        "sonomask": rest,
        "plain": plain,
        "streams": streams,
    }
    results["ratios"] = report.ratios(results)
    report.print_summary(results)
    if not args.no_write:
        report.write(results, args.results_dir)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", type=Path, help=".pt weights (default: the shipped model)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--backends", nargs="+", help="model backends to time (default: every available one)"
    )
    parser.add_argument(
        "--service-backend", default="auto", help="SONOMASK_BACKEND of the served app"
    )
    parser.add_argument("--images", type=int, default=16, help="images in the set (default 16)")
    parser.add_argument("--duration-s", type=float, default=12.0, help="seconds per load phase")
    parser.add_argument("--quick", action="store_true", help="short phases, for a smoke check")
    parser.add_argument("--profile-svg", type=Path, help="py-spy flame graph of the app at 8")
    parser.add_argument(
        "--app-source",
        type=Path,
        help="serve the app from this checkout instead, to compare two versions",
    )
    parser.add_argument(
        "--served-model-backend",
        choices=BACKENDS,
        help="bench.model_times backend that matches the served app (default: its backend)",
    )
    parser.add_argument("--skip-plain", action="store_true", help="skip the plain server")
    parser.add_argument("--streams", type=int, default=4, help="WebRTC streams for (d)")
    parser.add_argument("--skip-streams", action="store_true", help="skip the stream benchmark")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where to write the results"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; write no results")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration_s = min(args.duration_s, 3.0)
    return args


def describe_environment() -> dict[str, Any]:
    """Describe the machine and what else was using its CPU when the run started."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "busy_processes": _busy_processes(),
        "packages": _versions("torch", "onnxruntime", "openvino", "ultralytics", "opencv-python"),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def _busy_processes(min_cpu_percent: float = 5.0) -> list[str]:
    """Other processes above `min_cpu_percent` CPU, by program name and arguments (cut short)."""
    output = subprocess.run(
        ["ps", "-eo", "pcpu=,args=", "--sort=-pcpu"], capture_output=True, text=True, check=False
    ).stdout
    busy = []
    for line in output.splitlines():
        cpu, _, command = line.strip().partition(" ")
        if float(cpu or 0) < min_cpu_percent:
            break
        if str(os.getpid()) not in command:
            busy.append(f"{cpu}% {command.strip()[:80]}")
    return busy


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def available_backends(model: Path, device: str) -> list[str]:
    """Backends whose runtime is installed and whose model file exists for `device`."""
    on_cuda = device.startswith("cuda")
    backends = []
    onnx_file = model.with_suffix(".onnx").is_file()
    if onnx_file and importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        if not on_cuda:
            backends += ["onnx", "onnx-ultralytics"]
        elif "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            backends.append("onnx")
    if onnx_file and importlib.util.find_spec("openvino") and not on_cuda:
        backends.append("openvino")
        if _cpu_has_bfloat16():
            backends.append("openvino-bf16")
    if importlib.util.find_spec("ultralytics"):
        backends.append("torch")
    if on_cuda and model.with_suffix(".engine").is_file() and importlib.util.find_spec("tensorrt"):
        backends.append("tensorrt")
    return backends


def _cpu_has_bfloat16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def time_model(
    backend: str, model: Path, args: argparse.Namespace, label: str = "(a) model time"
) -> dict[str, Any]:
    """Run `bench.model_times` for one backend in a fresh process and read its result."""
    print(f"{label}, backend {backend} ...", flush=True)
    repeats = 20 if args.quick else 80
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "model.json"
        command = [sys.executable, "-m", "bench.model_times", "--backend", backend]
        command += ["--model", str(model), "--device", args.device, "--out", str(out)]
        command += ["--images", str(args.images), "--repeats", str(repeats)]
        completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if completed.returncode != 0:
            tail = completed.stderr.strip().splitlines()[-3:]
            print(f"    failed: {' | '.join(tail)}")
            return {"backend": backend, "error": "\n".join(tail)}
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    print(
        f"    batch 1: {result['batch_1']['p50_ms']:.1f} ms, "
        f"batch 8: {result['batch_8']['p50_ms']:.1f} ms per image"
    )
    return result


def measure_ssim(image_set: ImageSet, repeats: int = 300) -> dict[str, Any]:
    """Time the tracker's SSIM check (small grey copy plus SSIM) per frame."""
    from skimage.metrics import structural_similarity

    from service.config import Settings
    from service.tracking import small_grey, ssim_against

    width = Settings().ssim_width
    frames = [image.bgr for image in image_set.images]
    reference = small_grey(frames[0], width)
    for frame in frames[:4]:
        ssim_against(reference, frame, width)
    started = time.perf_counter()
    for index in range(repeats):
        ssim_against(reference, frames[index % len(frames)], width)
    per_frame_ms = (time.perf_counter() - started) * 1000 / repeats

    full_a = small_grey(frames[0], frames[0].shape[1])
    full_b = small_grey(frames[1], frames[1].shape[1])
    started = time.perf_counter()
    for _ in range(10):
        structural_similarity(full_a, full_b, data_range=1.0)
    full_ms = (time.perf_counter() - started) * 100
    print(f"SSIM check at width {width}: {per_frame_ms:.2f} ms/frame (full size {full_ms:.1f} ms)")
    return {"ssim_width": width, "per_frame_ms": per_frame_ms, "full_size_ms": full_ms}


def _load_phases(
    server: ServerProcess, image_set: ImageSet, args: argparse.Namespace, profile: Path | None
) -> dict[str, Any]:
    bodies = [image.png for image in image_set.images]
    phases: dict[str, Any] = {}
    single = run_load(
        server,
        "/v1/mask",
        bodies,
        content_type="image/png",
        concurrency=1,
        requests=40 if args.quick else 200,
    )
    phases["c1"] = asyncio.run(single).as_dict()
    single_jpeg = run_load(
        server,
        "/v1/mask",
        [image.jpeg for image in image_set.images],
        content_type="image/jpeg",
        concurrency=1,
        requests=40 if args.quick else 200,
    )
    phases["c1_jpeg"] = asyncio.run(single_jpeg).as_dict()
    for concurrency in (8, 32):
        load = run_load(
            server,
            "/v1/mask",
            bodies,
            content_type="image/png",
            concurrency=concurrency,
            duration_s=args.duration_s,
        )
        phases[f"c{concurrency}"] = asyncio.run(load).as_dict()
    for name, phase in phases.items():
        print(
            f"    {name}: p50 {phase['latency_p50_ms']:.1f} ms, p95 {phase['latency_p95_ms']:.1f}"
            f" ms, {phase['throughput_per_s']:.1f} images/s, failed {phase['requests_failed']}"
        )
    phases["memory"] = server.memory_mib()
    if profile is not None:
        record_profile(server, bodies, profile, args.duration_s)
    return phases


def record_profile(
    server: ServerProcess, bodies: list[bytes], svg: Path, duration_s: float
) -> None:
    """Write a py-spy flame graph of the server under 8 clients, in a phase of its own.

    The sampler takes CPU from the server, so this phase's figures are not kept.
    """
    svg.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "--pid", str(server.pid), "--output", str(svg)]
    command += ["--duration", str(max(1, int(duration_s))), "--rate", "100", "--nonblocking"]
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = run_load(
        server, "/v1/mask", bodies, content_type="image/png", concurrency=8, duration_s=duration_s
    )
    asyncio.run(load)
    sampler.wait(timeout=duration_s + 60)
    print(f"    flame graph: {svg}")


def benchmark_sonomask(
    model: Path, image_set: ImageSet, args: argparse.Namespace
) -> dict[str, Any]:
    print(f"(b) sonomask /v1/mask, SONOMASK_BACKEND={args.service_backend} ...", flush=True)
    env = {
        "SONOMASK_MODEL_PATH": str(model),
        "SONOMASK_BACKEND": args.service_backend,
        "SONOMASK_DEVICE": args.device,
        "SONOMASK_LOG_LEVEL": "WARNING",
        "SONOMASK_QUEUE_LIMIT": "256",
        # The self-test gates deployments on a model that finds its target; not timed here.
        "SONOMASK_SELFTEST_REQUIRE_DETECTION": "false",
    }
    source = args.app_source
    with run_server(
        "sonomask", "service.app:create_app", env, factory=True, source=source
    ) as server:
        import httpx

        info = httpx.get(f"{server.base_url}/readyz", timeout=10).json().get("model", {})
        # The served backend timed again just before the load, while the app idles, so that
        # the ratios compare figures taken under the same load from other processes.
        served = args.served_model_backend or str(info.get("backend"))
        adjacent = time_model(served, model, args, label="(b) served model")
        phases = _load_phases(server, image_set, args, args.profile_svg)
    phases["model_info"] = info
    phases["backend"] = info.get("backend")
    phases["model_adjacent"] = adjacent
    return phases


def benchmark_plain(model: Path, image_set: ImageSet, args: argparse.Namespace) -> dict[str, Any]:
    print("(c) plain FastAPI + ultralytics server ...", flush=True)
    from service.detection.loading import STUDY_CONF, ModelCard

    env = {"PLAIN_MODEL": str(model), "PLAIN_CONF": str(ModelCard.read(model).conf or STUDY_CONF)}
    with run_server("plain", "bench.plain_server:app", env) as server:
        return _load_phases(server, image_set, args, None)


def run_streams_benchmark(model: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """(d) Run the WebRTC stream benchmark in `bench/bench_streams.py` and read its JSON."""
    if not STREAMS_SCRIPT.is_file():
        print("(d) streams: bench/bench_streams.py does not exist; skipped")
        return {"skipped": "bench/bench_streams.py does not exist"}
    print(f"(d) {args.streams} WebRTC streams at 15 fps (bench/bench_streams.py) ...", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "streams.json"
        command = [sys.executable, str(STREAMS_SCRIPT), "--streams", str(args.streams)]
        command += ["--fps", "15", "--seconds", str(args.duration_s), "--model", str(model)]
        command += ["--out", str(out)]
        completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if completed.returncode != 0 or not out.is_file():
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
            print(f"    failed: {' | '.join(tail)}")
            return {"error": "\n".join(tail)}
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    print(
        f"    returned {result.get('returned_fps_per_stream')} fps per stream, "
        f"drop rate {result.get('drop_rate')}, round trip p50 "
        f"{result.get('round_trip_ms', {}).get('p50')} ms"
    )
    return result


if __name__ == "__main__":
    raise SystemExit(main())
