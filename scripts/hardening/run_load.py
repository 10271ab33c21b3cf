"""Load and soak on loopback: many `/v1/mask` requests at once, then stream sessions churned.

    python -m scripts.hardening.run_load --requests 2000 --concurrency 32 --sessions 50 \
        --json-out /tmp/load.json

starts `sonomask serve` as a child process, warms it up, records its resident memory,
sends the requests from an asyncio httpx client, records the memory again, then opens and
closes the sessions. Without `--model` it uses the shipped model, or builds an untrained
one when none is shipped. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from scripts.hardening.server import REPO_ROOT, ServerProcess, build_untrained_model, run_server
from scripts.hardening.stream_client import ChurnResult, churn_sessions, use_loopback_ice

REAL_IMAGE = REPO_ROOT.parent / "shared" / "data" / "real" / "hc18" / "162_HC.png"


@dataclass
class LoadResult:
    """Statuses, latency and failures of one burst of requests."""

    requests: int
    concurrency: int
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0  # 5xx other than 503
    missing_retry_after: int = 0  # 503 without Retry-After
    transport_errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "statuses": {str(code): count for code, count in sorted(self.statuses.items())},
            "server_errors": self.server_errors,
            "missing_retry_after": self.missing_retry_after,
            "transport_errors": len(self.transport_errors),
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "latency_ms": {
                "p50": round(float(np.percentile(latencies, 50)), 1),
                "p95": round(float(np.percentile(latencies, 95)), 1),
                "p99": round(float(np.percentile(latencies, 99)), 1),
                "max": round(float(latencies.max()), 1),
            },
        }


async def send_load(
    base_url: str,
    body: bytes,
    content_type: str,
    *,
    requests: int,
    concurrency: int,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST `body` to /v1/mask `requests` times from `concurrency` workers."""
    result = LoadResult(requests=requests, concurrency=concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    request_headers = {"Content-Type": content_type, **(headers or {})}
    remaining = requests
    started_s = time.monotonic()

    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                sent_s = time.monotonic()
                try:
                    response = await client.post("/v1/mask", content=body, headers=request_headers)
                except httpx.HTTPError as exc:
                    result.transport_errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                result.latencies_ms.append((time.monotonic() - sent_s) * 1000)
                result.statuses[response.status_code] += 1
                if response.status_code >= 500 and response.status_code != 503:
                    result.server_errors += 1
                if response.status_code == 503 and not response.headers.get("Retry-After"):
                    result.missing_retry_after += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - started_s
    return result


@dataclass
class SoakReport:
    """Everything one load run measured, ready for the hardening report."""

    image: str
    model: str
    warmup: dict[str, Any]
    load: dict[str, Any]
    rss_ready_bytes: int
    rss_warm_bytes: int
    rss_after_load_bytes: int
    rss_growth_fraction: float
    sessions: dict[str, Any] | None = None
    rss_after_sessions_bytes: int | None = None
    streams_active_after: float | None = None


def load_image(path: Path | None) -> tuple[bytes, str, str]:
    """Return (body, content type, description) for the request image."""
    if path is not None and path.is_file():
        media_type = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        with Image.open(path) as image:
            width, height = image.size
        return path.read_bytes(), media_type, f"{path.name} ({width}x{height})"
    y, x = np.mgrid[0:480, 0:640]
    grey = ((x * 3 + y * 5) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg", "synthetic grey ramp (640x480 JPEG)"


async def streams_active(client: httpx.AsyncClient, wait_s: float = 10.0) -> float:
    """Read the sessions gauge, waiting up to `wait_s` for closing sessions to finish."""
    deadline_s = time.monotonic() + wait_s
    value = -1.0
    while time.monotonic() < deadline_s:
        text = (await client.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith("sonomask_streams_active "):
                value = float(line.split()[1])
        if value == 0.0:
            return value
        await asyncio.sleep(0.2)
    return value


async def soak(
    server: ServerProcess,
    body: bytes,
    content_type: str,
    *,
    requests: int,
    concurrency: int,
    warmup_requests: int,
    sessions: int,
    describe_image: str = "",
    describe_model: str = "",
) -> SoakReport:
    """Warm up, measure memory, run the load, measure again, then churn stream sessions."""
    rss_ready = server.rss_bytes()
    warmup = await send_load(
        server.base_url, body, content_type, requests=warmup_requests, concurrency=concurrency
    )
    rss_warm = server.rss_bytes()
    load = await send_load(
        server.base_url, body, content_type, requests=requests, concurrency=concurrency
    )
    rss_after = server.rss_bytes()
    report = SoakReport(
        image=describe_image,
        model=describe_model,
        warmup=warmup.summary(),
        load=load.summary(),
        rss_ready_bytes=rss_ready,
        rss_warm_bytes=rss_warm,
        rss_after_load_bytes=rss_after,
        rss_growth_fraction=round((rss_after - rss_warm) / rss_warm, 4),
    )
    if sessions > 0:
        use_loopback_ice()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            churn: ChurnResult = await churn_sessions(client, sessions)
            report.streams_active_after = await streams_active(client)
        report.sessions = asdict(churn)
        report.sessions["errors"] = churn.errors[:10]
        report.rss_after_sessions_bytes = server.rss_bytes()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load and soak sonomask on 127.0.0.1.")
    parser.add_argument("--requests", type=int, default=2000, help="requests after warm-up")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests")
    parser.add_argument("--sessions", type=int, default=50, help="stream sessions to churn")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped model)")
    parser.add_argument(
        "--image", type=Path, default=REAL_IMAGE, help="image to send (default: a real still)"
    )
    parser.add_argument("--json-out", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)

    from service.config import DEFAULT_MODEL_PATH

    with tempfile.TemporaryDirectory(prefix="sonomask-load-") as scratch:
        workdir = Path(scratch)
        model = args.model
        if model is None:
            model = DEFAULT_MODEL_PATH
            if not model.is_file():
                model = build_untrained_model(workdir / "untrained-n.pt")
        body, content_type, describe_image = load_image(args.image)
        settings = {"SONOMASK_MODEL_PATH": str(model), "SONOMASK_LOG_LEVEL": "WARNING"}
        if model != DEFAULT_MODEL_PATH:
            settings["SONOMASK_SELFTEST_REQUIRE_DETECTION"] = "false"
        with run_server(settings, workdir) as server:
            report = asyncio.run(
                soak(
                    server,
                    body,
                    content_type,
                    requests=args.requests,
                    concurrency=args.concurrency,
                    warmup_requests=args.warmup,
                    sessions=args.sessions,
                    describe_image=describe_image,
                    describe_model=model.name,
                )
            )

    text = json.dumps(asdict(report), indent=2)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text)
    failed = report.load["server_errors"] or report.load["missing_retry_after"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
