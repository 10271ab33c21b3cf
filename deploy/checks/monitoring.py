"""Checks of the monitoring files: promtool on the Prometheus config and rules, and every
PromQL query (alerts, Grafana dashboard, adapter rule) against the metrics the service exports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from deploy.checks.tools import REPO_ROOT, find_tool, run_tool

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
ALERT_RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "sonomask.json"
DATASOURCES = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
ADAPTER_RULES = REPO_ROOT / "k8s" / "components" / "queue-depth-autoscaling" / "adapter-rules.yaml"

# Series that Prometheus itself adds next to the scraped ones.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "ALERTS", "ALERTS_FOR_STATE"})

# Grafana replaces these before it sends a query; any duration parses the same way.
_GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*[a-zA-Z_]\w*\)$")


def check_prometheus_config() -> list[str]:
    """Run `promtool check config`, which also checks the rule files the config names."""
    completed = run_tool([find_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)])
    return [] if completed.returncode == 0 else [f"promtool check config: {completed.output}"]


def check_rule_files(*paths: Path) -> list[str]:
    """Run `promtool check rules` on each file, or on ALERT_RULES when none is given."""
    targets = [str(path) for path in paths] or [str(ALERT_RULES)]
    completed = run_tool([find_tool("promtool"), "check", "rules", *targets])
    return [] if completed.returncode == 0 else [f"promtool check rules: {completed.output}"]


def check_rule_unit_tests() -> list[str]:
    """Run `promtool test rules`, which checks when each alert fires on synthetic series."""
    completed = run_tool([find_tool("promtool"), "test", "rules", str(ALERT_RULE_TESTS)])
    return [] if completed.returncode == 0 else [f"promtool test rules: {completed.output}"]


def exported_series_names() -> frozenset[str]:
    """Return every series name that /metrics of the service can expose, from service.metrics."""
    from service.metrics import Metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
        "gauge": ("",),
    }
    names = set()
    for family in Metrics().registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return frozenset(names)


def known_label_values() -> dict[str, frozenset[str]]:
    """Return the values the service can give its enumerated labels."""
    from service.metrics import FRAME_DECISIONS, FRAME_SOURCES

    return {"decision": frozenset(FRAME_DECISIONS), "source": frozenset(FRAME_SOURCES)}


def selectors_in(expression: str) -> Iterator[promql_parser.VectorSelector]:
    """Yield every vector selector of an expression; raises ValueError if it does not parse."""
    stack: list[Any] = [promql_parser.parse(expression)]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            yield node
        elif isinstance(node, promql_parser.MatrixSelector):
            stack.append(node.vector_selector)
        elif isinstance(node, promql_parser.Call):
            stack.extend(node.args)
        elif isinstance(node, promql_parser.BinaryExpr):
            stack.extend([node.lhs, node.rhs])
        elif isinstance(node, promql_parser.AggregateExpr):
            stack.append(node.expr)
            if node.param is not None:
                stack.append(node.param)
        elif isinstance(
            node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
        ):
            stack.append(node.expr)


def query_problems(expression: str) -> list[str]:
    """Return the series and label values in `expression` that the service never exports."""
    try:
        selectors = list(selectors_in(expression))
    except ValueError as exc:
        return [f"invalid PromQL: {exc}"]

    exported = exported_series_names() | PROMETHEUS_SERIES
    label_values = known_label_values()
    problems = []
    for selector in selectors:
        name = selector.name or _name_matcher(selector)
        if name is None:
            problems.append(f"selector {selector} names no metric")
        elif name not in exported:
            problems.append(f"metric {name} is not exported by the service")
        for matcher in selector.matchers.matchers:
            allowed = label_values.get(matcher.name)
            if allowed is None:
                continue
            for value in _matched_values(matcher):
                if value not in allowed:
                    problems.append(
                        f"label {matcher.name}={value!r} never occurs; "
                        f"expected one of {sorted(allowed)}"
                    )
    return problems


def _name_matcher(selector: promql_parser.VectorSelector) -> str | None:
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return str(matcher.value)
    return None


def _matched_values(matcher: promql_parser.Matcher) -> list[str]:
    """Return the literal values an = or =~ matcher selects, or none for a real pattern."""
    if matcher.op == promql_parser.MatchOp.Equal:
        return [matcher.value]
    if matcher.op == promql_parser.MatchOp.Re and re.fullmatch(r"[\w|]+", matcher.value):
        return matcher.value.split("|")
    return []


def rule_expressions(groups: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """Yield (rule name, expr) for every rule of a rule file's groups."""
    for group in groups:
        for rule in group.get("rules", []):
            yield rule.get("alert") or rule.get("record") or "<unnamed>", rule["expr"]


def check_alert_queries() -> list[str]:
    """Check that every alert rule queries only metrics and label values the service exports."""
    groups = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))["groups"]
    return [
        f"{ALERT_RULES.name} {name}: {problem}"
        for name, expression in rule_expressions(groups)
        for problem in query_problems(expression)
    ]


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield (where, PromQL) for each panel target and each query variable of a dashboard."""
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expression = target.get("expr", "")
            where = f"panel {panel.get('title')!r} target {target.get('refId')}"
            yield where, _GRAFANA_INTERVALS.sub("5m", expression)
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = _LABEL_VALUES.match(text.strip())
        if match:
            yield f"variable {variable.get('name')!r}", match.group("selector")


def check_dashboard() -> list[str]:
    """Check that the dashboard parses, uses the provisioned data source and queries exported
    metrics, and that its panel ids are unique.
    """
    try:
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"{DASHBOARD.name}: invalid JSON: {exc}"]

    findings = []
    datasource_uids = {
        source["uid"]
        for source in yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    }
    panel_ids = []
    queries = 0
    for panel in _all_panels(dashboard):
        panel_ids.append(panel.get("id"))
        if panel.get("type") == "row":
            continue
        uid = (panel.get("datasource") or {}).get("uid")
        if uid not in datasource_uids:
            findings.append(
                f"{DASHBOARD.name} panel {panel.get('title')!r}: data source uid {uid!r} is not "
                f"provisioned (provisioned: {sorted(datasource_uids)})"
            )
        if not panel.get("targets"):
            findings.append(f"{DASHBOARD.name} panel {panel.get('title')!r} has no query")
    duplicates = sorted({pid for pid in panel_ids if panel_ids.count(pid) > 1}, key=str)
    if duplicates:
        findings.append(f"{DASHBOARD.name}: panel ids used more than once: {duplicates}")

    for where, expression in dashboard_queries(dashboard):
        queries += 1
        findings.extend(
            f"{DASHBOARD.name} {where}: {problem}" for problem in query_problems(expression)
        )
    if queries == 0:
        findings.append(f"{DASHBOARD.name}: no queries found")
    return findings


def _all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    pending = list(dashboard.get("panels", []))
    while pending:
        panel = pending.pop(0)
        panels.append(panel)
        pending.extend(panel.get("panels", []))
    return panels


def check_adapter_rules() -> list[str]:
    """Check that the Prometheus Adapter rule selects a series the service exports."""
    rules = yaml.safe_load(ADAPTER_RULES.read_text(encoding="utf-8"))["rules"]
    return [
        f"{ADAPTER_RULES.name} seriesQuery: {problem}"
        for rule in rules
        for problem in query_problems(rule["seriesQuery"])
    ]
