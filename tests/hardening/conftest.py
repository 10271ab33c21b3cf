"""Fixtures for the hardening tests: settings for the untrained model and a child-process server.

Tests marked `slow` here are skipped unless the run selects them with a marker expression,
for example `pytest tests/hardening -m slow`. This keeps the default run within a few minutes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # The corpus, server and load tools live in scripts/hardening and are imported from there.
    sys.path.insert(0, str(REPO_ROOT))

from scripts.hardening.server import ServerProcess, run_server  # noqa: E402
from service.config import Settings  # noqa: E402

SHARED_REAL = REPO_ROOT.parent / "shared" / "data" / "real"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip_slow = pytest.mark.skip(reason="slow hardening form: select it with `-m slow`")
    hardening_dir = Path(__file__).parent
    for item in items:
        if item.get_closest_marker("slow") and hardening_dir in Path(str(item.path)).parents:
            item.add_marker(skip_slow)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(untrained_model_path: Path) -> SettingsFactory:
    """Build settings for the untrained model; keyword arguments override fields.

    The untrained model finds nothing, so the start-up self-test must not require a detection.
    """

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_path": untrained_model_path,
            "selftest_require_detection": False,
            "max_wait_ms": 2.0,
        }
        values.update(overrides)
        return Settings(**values)

    return build


def child_settings(model_path: Path, **overrides: str) -> dict[str, str]:
    """SONOMASK_* variables for a child-process server with JSON logs at DEBUG level."""
    values = {
        "SONOMASK_MODEL_PATH": str(model_path),
        "SONOMASK_SELFTEST_REQUIRE_DETECTION": "false",
        "SONOMASK_MAX_WAIT_MS": "2",
        "SONOMASK_LOG_JSON": "true",
        "SONOMASK_LOG_LEVEL": "DEBUG",
    }
    values.update(overrides)
    return values


@pytest.fixture(scope="session")
def child_server(
    untrained_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One `sonomask serve` child for the whole session, shared by the corpus and load tests."""
    workdir = tmp_path_factory.mktemp("child-server")
    with run_server(child_settings(untrained_model_path), workdir) as server:
        yield server


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not SHARED_REAL.is_dir():
        pytest.skip(f"real ultrasound files not found at {SHARED_REAL}")
    return SHARED_REAL
