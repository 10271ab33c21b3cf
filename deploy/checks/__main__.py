"""Run every deployment check; exit 1 on any finding or missing tool."""

from __future__ import annotations

import sys
from collections.abc import Callable

from deploy.checks import compose, dockerfile, kubernetes, monitoring
from deploy.checks.tools import ToolMissingError

CHECKS: list[tuple[str, Callable[[], list[str]]]] = [
    ("Dockerfile: hadolint", dockerfile.check_hadolint),
    ("Dockerfile: runtime targets", dockerfile.check_runtime_targets),
    ("compose: Compose Specification schema", compose.check_compose_schema),
    ("compose: docker compose config and policies", compose.check_compose_models),
    ("Prometheus: promtool check config", monitoring.check_prometheus_config),
    ("Prometheus: promtool check rules", monitoring.check_rule_files),
    ("Prometheus: promtool test rules", monitoring.check_rule_unit_tests),
    ("Prometheus: alert queries name exported metrics", monitoring.check_alert_queries),
    ("Grafana: dashboard", monitoring.check_dashboard),
    ("Prometheus Adapter: rule", monitoring.check_adapter_rules),
    ("Kubernetes: kustomize, schemas, CRDs and workload rules", kubernetes.check_kubernetes),
]


def main() -> int:
    failed = 0
    for title, check in CHECKS:
        try:
            findings = check()
        except ToolMissingError as exc:
            findings = [str(exc)]
        if findings:
            failed += 1
            print(f"FAIL  {title}")
            for finding in findings:
                print(f"      {finding}")
        else:
            print(f"ok    {title}")
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
