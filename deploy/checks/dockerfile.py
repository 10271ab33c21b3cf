"""Checks of the Dockerfile: hadolint, and the properties each runtime target must have."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from deploy.checks.tools import REPO_ROOT, find_tool, run_tool

DOCKERFILE = REPO_ROOT / "Dockerfile"
RUNTIME_TARGETS = ("cpu", "gpu")

_FROM = re.compile(r"^FROM\s+(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?\s*$", re.IGNORECASE)


@dataclass
class Stage:
    """One build stage: its name and its instructions with continuation lines joined."""

    name: str
    base: str
    instructions: list[str] = field(default_factory=list)

    def values_of(self, keyword: str) -> list[str]:
        prefix = keyword.upper() + " "
        return [
            line[len(prefix) :] for line in self.instructions if line.upper().startswith(prefix)
        ]


def check_hadolint(dockerfile: Path = DOCKERFILE) -> list[str]:
    """Return hadolint's findings; rules ignored inline in the Dockerfile stay ignored."""
    hadolint = find_tool("hadolint")
    completed = run_tool([hadolint, "--no-color", "--format", "tty", str(dockerfile)])
    if completed.returncode == 0:
        return []
    return [line for line in completed.output.splitlines() if line.strip()] or [
        f"hadolint exited {completed.returncode} without output"
    ]


def parse_stages(text: str) -> list[Stage]:
    """Split a Dockerfile into stages; comments dropped, continuation lines joined."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        joined.append(pending + stripped)
        pending = ""

    stages: list[Stage] = []
    for line in joined:
        match = _FROM.match(line)
        if match:
            name = match.group("name") or str(len(stages))
            stages.append(Stage(name=name, base=match.group("image")))
        elif stages:
            stages[-1].instructions.append(line)
    return stages


def check_runtime_targets(dockerfile: Path = DOCKERFILE) -> list[str]:
    """Check that each runtime target runs as non-root, has a HEALTHCHECK and runs offline.

    The target must also listen on all addresses and start the `sonomask` command.
    """
    stages = {stage.name: stage for stage in parse_stages(dockerfile.read_text(encoding="utf-8"))}
    findings = []
    for target in RUNTIME_TARGETS:
        stage = stages.get(target)
        if stage is None:
            findings.append(f"Dockerfile: no stage named {target!r}")
            continue
        findings.extend(
            f"Dockerfile stage {target}: {problem}" for problem in _stage_problems(stage)
        )
    last = parse_stages(dockerfile.read_text(encoding="utf-8"))[-1].name
    if last != "cpu":
        findings.append(
            f"Dockerfile: the last stage (built by default) is {last!r}, expected 'cpu'"
        )
    return findings


def _stage_problems(stage: Stage) -> list[str]:
    problems = []
    users = stage.values_of("USER")
    if not users:
        problems.append("no USER instruction, so the container runs as root")
    elif users[-1].split(":")[0] in {"0", "root"}:
        problems.append(f"the final USER is {users[-1]!r}, which is root")
    if not stage.values_of("HEALTHCHECK"):
        problems.append("no HEALTHCHECK instruction")
    env = " ".join(stage.values_of("ENV"))
    for required in ("YOLO_OFFLINE=1", "YOLO_CONFIG_DIR=/tmp/", "SONOMASK_HOST=0.0.0.0"):
        if required not in env:
            problems.append(f"ENV does not set {required}")
    if not any(value.startswith('["sonomask"') for value in stage.values_of("ENTRYPOINT")):
        problems.append('ENTRYPOINT is not ["sonomask"]')
    return problems
