"""Checks of docker-compose.yml: the Compose schema, Docker Compose's own model, and policies."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from deploy.checks.tools import REPO_ROOT, find_docker_compose, find_tool, run_tool

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_OVERRIDE = REPO_ROOT / "deploy" / "compose.gpu.yml"
TURN_CONFIG = REPO_ROOT / "deploy" / "coturn" / "turnserver.conf"

# Variables the compose file requires (`${NAME:?...}`); placeholders let it render here.
CHECK_ENVIRONMENT = {"TURN_PASSWORD": "check-only", "GRAFANA_ADMIN_PASSWORD": "check-only"}

FILE_SETS = {
    "cpu": (COMPOSE_FILE,),
    "gpu": (COMPOSE_FILE, GPU_OVERRIDE),
}


def check_compose_schema() -> list[str]:
    """Validate both compose files against the Compose Specification schema."""
    tool = find_tool("check-jsonschema")
    files = [str(COMPOSE_FILE), str(GPU_OVERRIDE)]
    completed = run_tool([tool, "--builtin-schema", "vendor.compose-spec", *files])
    if completed.returncode == 0:
        return []
    return [f"compose schema: {line}" for line in completed.output.splitlines() if line.strip()]


def render_compose(files: tuple[Path, ...]) -> dict[str, Any]:
    """Return the model Docker Compose builds from `files`; raises ValueError if it rejects them."""
    binary = find_docker_compose()
    command = [binary]
    for path in files:
        command += ["-f", str(path)]
    command += ["config", "--format", "json"]
    completed = run_tool(command, env=CHECK_ENVIRONMENT)
    if completed.returncode != 0:
        raise ValueError(completed.output)
    model: dict[str, Any] = json.loads(completed.stdout)
    return model


def check_compose_models() -> list[str]:
    """Render each file set with Docker Compose and check the policies of the result."""
    findings = []
    for name, files in FILE_SETS.items():
        try:
            model = render_compose(files)
        except ValueError as exc:
            findings.append(f"docker compose config ({name}): {exc}")
            continue
        findings.extend(f"compose ({name}): {problem}" for problem in compose_problems(model))
        if name == "gpu":
            findings.extend(f"compose (gpu): {problem}" for problem in _gpu_problems(model))
    return findings


def compose_problems(model: dict[str, Any]) -> list[str]:
    """Return what breaks the stack's rules in a rendered compose model."""
    services = model.get("services", {})
    problems = []
    for required in ("sonomask", "prometheus", "grafana", "coturn"):
        if required not in services:
            problems.append(f"no service named {required!r}")
    if problems:
        return problems

    sonomask = services["sonomask"]
    environment = sonomask.get("environment", {})
    if not sonomask.get("read_only"):
        problems.append("sonomask: the root filesystem is not read-only")
    if not any(str(mount).startswith("/tmp") for mount in sonomask.get("tmpfs", [])):
        problems.append("sonomask: no tmpfs on /tmp, which YOLO_CONFIG_DIR needs")
    if "ALL" not in sonomask.get("cap_drop", []):
        problems.append("sonomask: capabilities are not dropped (cap_drop: [ALL])")
    if not (environment.get("SONOMASK_API_KEYS_FILE") or environment.get("SONOMASK_API_KEYS")):
        problems.append("sonomask: no API keys are configured")
    if str(environment.get("SONOMASK_ALLOW_PUBLIC_WITHOUT_KEYS", "")).lower() == "true":
        problems.append("sonomask: SONOMASK_ALLOW_PUBLIC_WITHOUT_KEYS is true")

    problems.extend(_turn_problems(services["coturn"], model.get("networks", {})))
    return problems


def _gpu_problems(model: dict[str, Any]) -> list[str]:
    sonomask = model["services"]["sonomask"]
    problems = []
    if sonomask.get("build", {}).get("target") != "gpu":
        problems.append("sonomask is not built from the gpu target")
    devices = (
        sonomask.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    if not any("gpu" in device.get("capabilities", []) for device in devices):
        problems.append("sonomask reserves no GPU device")
    if sonomask.get("environment", {}).get("SONOMASK_DEVICE") != "cuda":
        problems.append("SONOMASK_DEVICE is not cuda")
    return problems


def read_turn_config(path: Path = TURN_CONFIG) -> dict[str, list[str]]:
    """Return turnserver.conf as option -> values (an option may repeat)."""
    options: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition("=")
        options.setdefault(key.strip(), []).append(value.strip())
    return options


def _turn_problems(coturn: dict[str, Any], networks: dict[str, Any]) -> list[str]:
    """The TURN server's address, relay ports and peer allowlist must match the compose file."""
    problems = []
    options = read_turn_config()
    subnets = [
        ipaddress.ip_network(entry["subnet"])
        for network in networks.values()
        for entry in (network.get("ipam") or {}).get("config", [])
        if "subnet" in entry
    ]
    if len(subnets) != 1:
        return [f"expected one fixed subnet for the compose network, found {len(subnets)}"]
    subnet = subnets[0]

    allowed = options.get("allowed-peer-ip", [])
    expected_range = f"{subnet.network_address}-{subnet.broadcast_address}"
    if expected_range not in allowed:
        problems.append(
            f"turnserver.conf allowed-peer-ip is {allowed}, expected the compose subnet "
            f"{expected_range}"
        )

    for network in coturn.get("networks", {}).values():
        address = (network or {}).get("ipv4_address")
        if address and ipaddress.ip_address(address) not in subnet:
            problems.append(f"coturn address {address} is outside the subnet {subnet}")

    min_port = int(options.get("min-port", ["0"])[-1])
    max_port = int(options.get("max-port", ["0"])[-1])
    published = {
        int(port["target"]) for port in coturn.get("ports", []) if port.get("protocol") == "udp"
    }
    missing = sorted(set(range(min_port, max_port + 1)) - published)
    if missing:
        problems.append(
            f"coturn relay ports {min_port}-{max_port} are not all published; missing {missing[:5]}"
        )
    if "lt-cred-mech" not in options:
        problems.append("turnserver.conf does not require credentials (lt-cred-mech)")
    return problems
