"""Helpers for the deployment tests: import deploy.checks, find tools, pick free ports.

A missing tool skips a test with the install hint, except under CI (CI=true), where the
tools are installed by scripts/test.sh and a missing one fails the test instead.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from deploy.checks.tools import ToolMissingError, find_tool  # noqa: E402

T = TypeVar("T")


def _missing_tool(exc: ToolMissingError) -> None:
    message = f"{exc.tool} is not installed: {exc.hint}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must install every deployment tool")
    pytest.skip(message)


@pytest.fixture(scope="session")
def run_check() -> Callable[[Callable[[], T]], T]:
    """Return a runner for one check of deploy.checks that turns a missing tool into a skip."""

    def run(check: Callable[[], T]) -> T:
        try:
            return check()
        except ToolMissingError as exc:
            _missing_tool(exc)
            raise  # not reached: _missing_tool always raises

    return run


@pytest.fixture(scope="session")
def require_tool() -> Callable[[str], str]:
    """Return a lookup of a tool's path that skips the test when the tool is missing."""

    def lookup(name: str) -> str:
        try:
            return find_tool(name)
        except ToolMissingError as exc:
            _missing_tool(exc)
            raise

    return lookup


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Return a port on 127.0.0.1 that is free for `kind` (TCP or UDP) right now."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def pick_port() -> Callable[..., int]:
    """Return `free_port`, for tests that start servers."""
    return free_port
