"""A real Prometheus scrapes a real `sonomask serve` on loopback, with the project's alert rules.

Both run as subprocesses on free ports; the test ends them whether it passes or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.checks import monitoring

# Start-up budgets; together they bound the module at 60 s. The service loads and self-tests
# its model first. Prometheus took about 5 s here to scrape a new target for the first time.
SONOMASK_START_TIMEOUT_S = 35.0
PROMETHEUS_START_TIMEOUT_S = 10.0
FIRST_SCRAPE_TIMEOUT_S = 15.0


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for(
    description: str,
    probe: Callable[[], bool],
    process: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"{description}: the process exited {process.returncode}:\n{log.read_text()}"
            )
        try:
            if probe():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{description}: timed out after {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def sonomask_url(
    untrained_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    pick_port: Callable[[], int],
) -> Iterator[str]:
    """Start `sonomask serve` on a free loopback port and wait until /readyz returns 200."""
    tmp_path = tmp_path_factory.mktemp("sonomask")
    port = pick_port()
    log = tmp_path / "sonomask.log"
    env = {
        **os.environ,
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics"),
        "SONOMASK_MODEL_PATH": str(untrained_model_path),
        "SONOMASK_BACKEND": "torch",
        "SONOMASK_DEVICE": "cpu",
        "SONOMASK_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            "sonomask serve",
            lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
            process,
            log,
            SONOMASK_START_TIMEOUT_S,
        )
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def prometheus_url(
    sonomask_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    pick_port: Callable[[], int],
    require_tool: Callable[[str], str],
) -> Iterator[str]:
    """Start Prometheus on a free loopback port, scraping sonomask every second."""
    binary = require_tool("prometheus")
    tmp_path = tmp_path_factory.mktemp("prometheus")
    port = pick_port()

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(monitoring.ALERT_RULES)],
        "scrape_configs": [
            {
                "job_name": "sonomask",
                "static_configs": [{"targets": [sonomask_url.removeprefix("http://")]}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

    log = tmp_path / "prometheus.log"
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            "prometheus",
            lambda: httpx.get(f"{url}/-/ready", timeout=2).is_success,
            process,
            log,
            PROMETHEUS_START_TIMEOUT_S,
        )
        yield url
    finally:
        _stop(process)


def _query(prometheus_url: str, expression: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expression}, timeout=5)
    body = response.json()
    assert body["status"] == "success", f"{expression}: {json.dumps(body)}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _wait_for_target_up(prometheus_url: str) -> None:
    deadline = time.monotonic() + FIRST_SCRAPE_TIMEOUT_S
    while time.monotonic() < deadline:
        if _query(prometheus_url, 'up{job="sonomask"} == 1'):
            return
        time.sleep(0.25)
    targets = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=5).json()
    pytest.fail(f"the sonomask target never came up: {json.dumps(targets)[:2000]}")


@pytest.mark.slow
def test_prometheus_scrapes_sonomask(prometheus_url: str) -> None:
    _wait_for_target_up(prometheus_url)

    ready = _query(prometheus_url, 'sonomask_ready{job="sonomask"}')
    assert [sample["value"][1] for sample in ready] == ["1"]

    model = _query(prometheus_url, "sonomask_model_info")
    assert model and model[0]["metric"]["backend"] == "torch"

    decisions = _query(prometheus_url, 'sonomask_frames_total{source="rest"}')
    assert {sample["metric"]["decision"] for sample in decisions} == {
        "masked",
        "held",
        "clear",
        "blanked",
    }

    scraped = _query(prometheus_url, 'group by (__name__) ({__name__=~"sonomask_.+"})')
    scraped_names = {sample["metric"]["__name__"] for sample in scraped}
    assert scraped_names <= monitoring.exported_series_names()
    assert "sonomask_queue_depth" in scraped_names


@pytest.mark.slow
def test_prometheus_runs_project_queries(prometheus_url: str) -> None:
    _wait_for_target_up(prometheus_url)

    rules = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
    expected = {
        name
        for name, _ in monitoring.rule_expressions(
            yaml.safe_load(monitoring.ALERT_RULES.read_text(encoding="utf-8"))["groups"]
        )
    }
    assert set(loaded) == expected
    assert set(loaded.values()) <= {"ok", "unknown"}

    # Every dashboard query must run on the real engine, with Grafana's variables filled in.
    dashboard = json.loads(monitoring.DASHBOARD.read_text(encoding="utf-8"))
    for where, expression in monitoring.dashboard_queries(dashboard):
        filled = expression.replace("$instance", ".*")
        response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": filled}, timeout=5)
        assert response.json()["status"] == "success", f"{where}: {response.text}"
