"""A server in a subprocess on loopback, and a closed-loop HTTP load against it.

The client runs in the benchmark's own process and the server in another, so they do not
share a GIL. Each of `concurrency` clients sends the next image as soon as the response
to its previous one arrived, over one kept-alive connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.images import REPO_ROOT

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerProcess:
    """A running server: its process, its address and the log it writes (kept on failure)."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_s(self) -> float:
        """User plus system CPU seconds the server process has used so far, all threads."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S

    def memory_mib(self) -> dict[str, float]:
        """Resident memory now (VmRSS) and at its peak (VmHWM), in MiB."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in {"VmRSS", "VmHWM"}:
                values[key] = int(rest.split()[0]) / 1024
        return {"rss_mib": values.get("VmRSS", 0.0), "peak_rss_mib": values.get("VmHWM", 0.0)}


@contextlib.contextmanager
def run_server(
    name: str,
    app: str,
    env: dict[str, str],
    *,
    factory: bool = False,
    ready_path: str = "/readyz",
    source: Path | None = None,
) -> Iterator[ServerProcess]:
    """Start `uvicorn app` on a free loopback port and wait until `ready_path` returns 200.

    `source` runs the app from another checkout of the repository, ahead of the installed one.
    """
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log"]
    if factory:
        command.append("--factory")
    log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    full_env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False", **env}
    if source is not None:
        full_env["PYTHONPATH"] = str(source)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=source or REPO_ROOT,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(name, process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_ready(server, ready_path, timeout_s=240.0)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: ServerProcess, ready_path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"{server.name} server exited with {server.process.returncode}; "
                    f"its log is {server.log_path}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(ready_path).status_code == 200:
                    return
            time.sleep(0.2)
    raise TimeoutError(
        f"{server.name} server not ready after {timeout_s:.0f} s ({server.log_path})"
    )


@dataclass
class LoadResult:
    """Measurements of one load phase: latencies in ms, throughput in images per second."""

    concurrency: int
    requests_ok: int
    requests_failed: int
    failures_by_status: dict[str, int]
    elapsed_s: float
    throughput_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    server_cpu_s_per_request: float
    client_cpu_s_per_request: float
    server_timing_p50_ms: dict[str, float] = field(default_factory=dict)
    # The app's own batcher figures over the phase; None for the plain server.
    model_in_situ: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_load(
    server: ServerProcess,
    path: str,
    bodies: Sequence[bytes],
    *,
    content_type: str,
    concurrency: int,
    duration_s: float | None = None,
    requests: int | None = None,
    warmup_requests: int = 8,
) -> LoadResult:
    """Drive `concurrency` closed-loop clients for `duration_s`, or for `requests` responses."""
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s and requests")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": content_type}
    next_body = itertools.cycle(bodies)
    latencies_ms: list[float] = []
    failures: dict[str, int] = {}
    server_timings: dict[str, list[float]] = {}

    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60) as client:
        for _ in range(warmup_requests):
            await client.post(path, content=next(next_body), headers=headers)

        stop_at = time.monotonic() + duration_s if duration_s is not None else float("inf")
        remaining = [requests if requests is not None else -1]

        async def one_client() -> None:
            while time.monotonic() < stop_at and remaining[0] != 0:
                remaining[0] -= 1
                body = next(next_body)
                started = time.perf_counter()
                response = await client.post(path, content=body, headers=headers)
                latency_ms = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    key = str(response.status_code)
                    failures[key] = failures.get(key, 0) + 1
                    continue
                latencies_ms.append(latency_ms)
                _collect_server_timing(response.headers.get("server-timing"), server_timings)

        counters_before = scrape_model_counters(server)
        cpu_before = server.cpu_s()
        client_before = _own_cpu_s()
        started_s = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed_s = time.monotonic() - started_s
        server_cpu_s = server.cpu_s() - cpu_before
        client_cpu_s = _own_cpu_s() - client_before
        in_situ = model_share(counters_before, scrape_model_counters(server), elapsed_s)

    latencies_ms.sort()
    completed = max(len(latencies_ms), 1)
    return LoadResult(
        concurrency=concurrency,
        requests_ok=len(latencies_ms),
        requests_failed=sum(failures.values()),
        failures_by_status=failures,
        elapsed_s=round(elapsed_s, 3),
        throughput_per_s=len(latencies_ms) / elapsed_s,
        latency_p50_ms=_percentile(latencies_ms, 0.50),
        latency_p95_ms=_percentile(latencies_ms, 0.95),
        latency_p99_ms=_percentile(latencies_ms, 0.99),
        latency_mean_ms=statistics.fmean(latencies_ms) if latencies_ms else float("nan"),
        server_cpu_s_per_request=server_cpu_s / completed,
        client_cpu_s_per_request=client_cpu_s / completed,
        server_timing_p50_ms={
            name: statistics.median(values) for name, values in server_timings.items()
        },
        model_in_situ=in_situ,
    )


# Batcher metrics of the app: their change over a phase gives the model's share of it.
_MODEL_COUNTERS = (
    "sonomask_inference_seconds_sum",
    "sonomask_batch_size_sum",
    "sonomask_batch_size_count",
)


def scrape_model_counters(server: ServerProcess) -> dict[str, float] | None:
    """Read the batcher's counters from the app's /metrics; None for a server without them."""
    response = httpx.get(f"{server.base_url}/metrics", timeout=10)
    if response.status_code != 200:
        return None
    values = {}
    for line in response.text.splitlines():
        name, _, value = line.partition(" ")
        if name in _MODEL_COUNTERS:
            values[name] = float(value)
    return values if len(values) == len(_MODEL_COUNTERS) else None


def model_share(
    before: dict[str, float] | None, after: dict[str, float] | None, elapsed_s: float
) -> dict[str, float] | None:
    """Model time per image, mean batch size and the model's busy share between two scrapes."""
    if before is None or after is None:
        return None
    model_s = after["sonomask_inference_seconds_sum"] - before["sonomask_inference_seconds_sum"]
    frames = after["sonomask_batch_size_sum"] - before["sonomask_batch_size_sum"]
    batches = after["sonomask_batch_size_count"] - before["sonomask_batch_size_count"]
    if frames <= 0 or batches <= 0:
        return None
    return {
        "frames": frames,
        "mean_batch_size": frames / batches,
        "model_ms_per_image": model_s * 1000 / frames,
        "model_busy_share": model_s / elapsed_s,
    }


def _collect_server_timing(header: str | None, into: dict[str, list[float]]) -> None:
    """Add each `name;dur=ms` entry of a Server-Timing header to the lists in `into`."""
    if not header:
        return
    for entry in header.split(","):
        name, _, rest = entry.strip().partition(";dur=")
        if rest:
            with contextlib.suppress(ValueError):
                into.setdefault(name, []).append(float(rest))


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
