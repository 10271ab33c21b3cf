"""Run `sonomask serve` as a child process on loopback, with its logs and file writes captured.

The hardening checks need what an in-process server cannot give: the resident memory of
the server alone, its log output exactly as an operator sees it, and every file it opens
for writing. The child runs the real CLI under a Python audit hook that reports each
write-mode `open`, `mkdir`, `rename` and `remove` as a JSON line on stderr, so a test can
tell which files the server itself touched. The child also offers only 127.0.0.1 as its
ICE host candidate, so stream media stays on loopback.

NOTE: C code that writes files without going through Python (OpenCV, PyAV, libjpeg)
bypasses the audit hook. Only listing the folders a test watches catches such writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]

# The child's entry point: install the audit hook, then run the real `sonomask serve`.
_AUDITED_SERVE = r"""
import json, os, sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate",
                "os.symlink", "os.link", "shutil.copyfile", "shutil.move"}

def _report(event, path):
    sys.__stderr__.write(json.dumps({"audit": event, "path": str(path)}) + "\n")

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else False
        writes = writes or bool((flags or 0) & _WRITE_FLAGS)
        if writes:
            _report("open-for-write", path)
    elif event in _PATH_EVENTS and args and not isinstance(args[0], int):
        _report(event, args[0])

sys.addaudithook(_hook)

# aioice leaves loopback out of its host candidates; keep stream media on 127.0.0.1.
import aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

from service.cli import main
sys.exit(main(["serve"]))
"""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build_untrained_model(path: Path) -> Path:
    """Save a two-class YOLOv8n with random weights: it runs like a real model and finds nothing."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.names = {0: "transverse", 1: "mid_sagittal"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "train_args": {"imgsz": 320}}, path)
    return path


@dataclass
class ServerProcess:
    """A running `sonomask serve` child, its captured output and its folders."""

    process: subprocess.Popen[str]
    base_url: str
    workdir: Path
    lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def mark(self) -> int:
        """Return the current position in the output, for `output_since` to read what follows."""
        with self._lock:
            return len(self.lines)

    def output_since(self, mark: int = 0) -> list[str]:
        with self._lock:
            return list(self.lines[mark:])

    def log_lines_since(self, mark: int = 0) -> list[str]:
        """Output lines that are not audit reports."""
        return [line for line in self.output_since(mark) if not _is_audit(line)]

    def writes_since(self, mark: int = 0) -> list[dict[str, str]]:
        """Audit reports of files the server opened for writing, created, moved or removed."""
        reports = []
        for line in self.output_since(mark):
            if _is_audit(line):
                reports.append(json.loads(line))
        return reports

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))


def _is_audit(line: str) -> bool:
    return line.startswith('{"audit": ')


def server_environment(workdir: Path, port: int, settings: Mapping[str, str]) -> dict[str, str]:
    """Build the child's environment: no inherited SONOMASK_* values, private temp and home."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SONOMASK_")}
    for name in ("tmp", "home", "yolo-config"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "YOLO_OFFLINE": "1",
            "YOLO_VERBOSE": "False",
            "YOLO_CONFIG_DIR": str(workdir / "yolo-config"),
            "MPLCONFIGDIR": str(workdir / "yolo-config"),
            "TMPDIR": str(workdir / "tmp"),
            "HOME": str(workdir / "home"),
            "PYTHONUNBUFFERED": "1",
            "SONOMASK_HOST": "127.0.0.1",
            "SONOMASK_PORT": str(port),
        }
    )
    env.update(settings)
    return env


@contextlib.contextmanager
def run_server(
    settings: Mapping[str, str],
    workdir: Path,
    *,
    ready_timeout_s: float = 240.0,
    wait_ready: bool = True,
) -> Iterator[ServerProcess]:
    """Start `sonomask serve` with `settings` (SONOMASK_* variables) and stop it on exit.

    The child runs with `workdir/cwd` as its working directory and private TMPDIR and HOME
    folders under `workdir`, so a test can list them for files the server left behind.
    """
    port = free_port()
    cwd = workdir / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", _AUDITED_SERVE],
        cwd=cwd,
        env=server_environment(workdir, port, settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", workdir)
    reader = threading.Thread(target=server._collect, name="server-output", daemon=True)
    reader.start()
    try:
        if wait_ready:
            wait_until_ready(server, ready_timeout_s)
        yield server
    finally:
        stop_server(server)
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def wait_until_ready(server: ServerProcess, timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if not server.is_alive():
            output = "\n".join(server.log_lines_since()[-30:])
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{output}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{server.base_url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            detail = response.json().get("detail", "")
            if detail.startswith("start-up failed"):
                raise RuntimeError(f"the server did not start: {detail}")
        time.sleep(0.2)
    raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s")


def stop_server(server: ServerProcess, timeout_s: float = 30.0) -> None:
    """Ask the server to shut down as an orchestrator would (SIGTERM), then kill it if it hangs."""
    if not server.is_alive():
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


def list_files(root: Path) -> dict[str, tuple[int, int]]:
    """List every file under `root` with its size and modification time in nanoseconds."""
    listing = {}
    for path in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file():
                stat = path.stat()
                listing[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return listing


@contextlib.asynccontextmanager
async def serve_in_process(app: Any, ready_timeout_s: float = 120.0) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn on 127.0.0.1 in this event loop; yield its base URL."""
    import asyncio

    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        deadline_s = time.monotonic() + 30
        while not server.started:
            if task.done() or time.monotonic() > deadline_s:
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            deadline_s = time.monotonic() + ready_timeout_s
            while (await client.get("/readyz")).status_code != 200:
                if time.monotonic() > deadline_s:
                    raise TimeoutError(f"the app was not ready within {ready_timeout_s:.0f} s")
                await asyncio.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
