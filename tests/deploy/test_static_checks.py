"""The checks of scripts/check-deploy.sh under pytest, and proof that each one can fail.

Every check runs on the real files and must report nothing; a mutated copy of the same
input must make it report the fault.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.checks import compose, dockerfile, kubernetes, monitoring

RunCheck = Callable[[Callable[[], Any]], Any]


# Dockerfile


def test_dockerfile_passes_hadolint(run_check: RunCheck) -> None:
    assert run_check(dockerfile.check_hadolint) == []


def test_hadolint_flags_unjustified_apt(run_check: RunCheck, tmp_path: Path) -> None:
    text = dockerfile.DOCKERFILE.read_text(encoding="utf-8")
    assert "# hadolint ignore=DL3008" in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("# hadolint ignore=DL3008", "# (ignore removed)"))

    findings = run_check(lambda: dockerfile.check_hadolint(broken))

    assert any("DL3008" in finding for finding in findings), findings


def test_dockerfile_runtime_targets() -> None:
    assert dockerfile.check_runtime_targets() == []


def test_runtime_target_rules_catch_root(tmp_path: Path) -> None:
    text = dockerfile.DOCKERFILE.read_text(encoding="utf-8")
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("USER 10001:10001", "USER root").replace("HEALTHCHECK", "# x"))

    findings = dockerfile.check_runtime_targets(broken)

    assert any("cpu" in f and "root" in f for f in findings), findings
    assert any("gpu" in f and "root" in f for f in findings), findings
    assert any("HEALTHCHECK" in f for f in findings), findings


def test_parse_stages_joins_continuations() -> None:
    stages = dockerfile.parse_stages(
        "FROM a AS one\n# note\nRUN x \\\n    && y\nFROM b AS two\nUSER 1\n"
    )

    assert [stage.name for stage in stages] == ["one", "two"]
    assert stages[0].instructions == ["RUN x && y"]
    assert stages[1].values_of("USER") == ["1"]


# Compose


def test_compose_files_match_schema(run_check: RunCheck) -> None:
    assert run_check(compose.check_compose_schema) == []


def test_compose_models_follow_policies(run_check: RunCheck) -> None:
    assert run_check(compose.check_compose_models) == []


def test_compose_rejects_unknown_key(run_check: RunCheck, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = compose.COMPOSE_FILE.read_text(encoding="utf-8")
    broken.write_text(text.replace("    restart: unless-stopped\n", "    restrat: always\n", 1))

    with pytest.raises(ValueError, match="restrat"):
        run_check(lambda: compose.render_compose((broken,)))


@pytest.fixture
def compose_model(run_check: RunCheck) -> dict[str, Any]:
    model: dict[str, Any] = run_check(lambda: compose.render_compose((compose.COMPOSE_FILE,)))
    return model


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda m: m["services"]["sonomask"].pop("read_only"), "not read-only"),
        (lambda m: m["services"]["sonomask"].pop("tmpfs"), "no tmpfs on /tmp"),
        (lambda m: m["services"]["sonomask"].pop("cap_drop"), "capabilities"),
        (
            lambda m: m["services"]["sonomask"]["environment"].pop("SONOMASK_API_KEYS_FILE"),
            "no API keys",
        ),
        (
            lambda m: m["services"]["sonomask"]["environment"].update(
                SONOMASK_ALLOW_PUBLIC_WITHOUT_KEYS="true"
            ),
            "ALLOW_PUBLIC_WITHOUT_KEYS",
        ),
        (
            lambda m: m["networks"]["sonomask"]["ipam"]["config"][0].update(subnet="10.99.0.0/16"),
            "allowed-peer-ip",
        ),
        (lambda m: m["services"]["coturn"]["ports"].pop(), "relay ports"),
        (lambda m: m["services"].pop("grafana"), "no service named 'grafana'"),
    ],
    ids=[
        "writable-root",
        "no-tmp",
        "capabilities-kept",
        "no-api-keys",
        "public-without-keys",
        "subnet-not-allowed-by-turn",
        "relay-port-unpublished",
        "no-grafana",
    ],
)
def test_compose_policy_catches(
    compose_model: dict[str, Any], mutate: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    assert compose.compose_problems(compose_model) == []
    broken = copy.deepcopy(compose_model)
    mutate(broken)

    problems = compose.compose_problems(broken)

    assert any(expected in problem for problem in problems), problems


# Prometheus, alert rules, Grafana


def test_prometheus_config_valid(run_check: RunCheck) -> None:
    assert run_check(monitoring.check_prometheus_config) == []


def test_alert_rules_valid(run_check: RunCheck) -> None:
    assert run_check(monitoring.check_rule_files) == []


def test_alert_rule_unit_tests_pass(run_check: RunCheck) -> None:
    assert run_check(monitoring.check_rule_unit_tests) == []


def test_promtool_rejects_broken_rule(run_check: RunCheck, tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    text = monitoring.ALERT_RULES.read_text(encoding="utf-8")
    broken.write_text(text.replace("expr: sonomask_ready == 0", "expr: sonomask_ready ==", 1))

    findings = run_check(lambda: monitoring.check_rule_files(broken))

    assert findings and "promtool check rules" in findings[0]


def test_alerts_cover_the_paging_signals() -> None:
    groups = yaml.safe_load(monitoring.ALERT_RULES.read_text(encoding="utf-8"))["groups"]
    expressions = dict(monitoring.rule_expressions(groups))

    assert 'decision="blanked"' in expressions["SonomaskFramesBlanked"]
    assert "sonomask_ready" in expressions["SonomaskNotReady"]
    assert "histogram_quantile(0.95" in expressions["SonomaskEndToEndLatencyP95High"]
    assert "sonomask_queue_depth" in expressions["SonomaskQueueDepthHigh"]
    assert not any("raw" in expression for expression in expressions.values())


def test_alert_queries_name_exported_metrics() -> None:
    assert monitoring.check_alert_queries() == []


def test_dashboard_queries_name_exported_metrics() -> None:
    assert monitoring.check_dashboard() == []


def test_dashboard_shows_required_signals() -> None:
    dashboard = json.loads(monitoring.DASHBOARD.read_text(encoding="utf-8"))
    queries = " ".join(expression for _, expression in monitoring.dashboard_queries(dashboard))

    for metric in (
        "sonomask_request_duration_seconds_bucket",
        "sonomask_end_to_end_seconds_bucket",
        "sonomask_batch_size_sum",
        "sonomask_queue_depth",
        "sonomask_frames_total",
        "sonomask_streams_active",
        "sonomask_rejections_total",
    ):
        assert metric in queries, f"no dashboard panel queries {metric}"


def test_adapter_rule_selects_exported_metric() -> None:
    assert monitoring.check_adapter_rules() == []


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("rate(sonomask_bogus_total[5m])", "sonomask_bogus_total is not exported"),
        ("sonomask_queue_depth_total", "sonomask_queue_depth_total is not exported"),
        ('sum(rate(sonomask_frames_total{decision="raw"}[5m]))', "decision='raw'"),
        ('sonomask_frames_total{decision=~"masked|unmasked"}', "decision='unmasked'"),
        ('sonomask_frames_total{source="email"}', "source='email'"),
        ("sum(rate(sonomask_frames_total[5m])) by (source", "invalid PromQL"),
    ],
)
def test_query_check_rejects(expression: str, expected: str) -> None:
    problems = monitoring.query_problems(expression)

    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    "expression",
    [
        'up{job="sonomask"} == 0',
        "sonomask_model_info",
        'sum by (le) (rate(sonomask_mask_age_frames_bucket{decision=~".+"}[5m]))',
        "sonomask_batch_size_sum / sonomask_batch_size_count",
    ],
)
def test_query_check_accepts(expression: str) -> None:
    assert monitoring.query_problems(expression) == []


def test_exported_names_follow_service_metrics() -> None:
    names = monitoring.exported_series_names()

    assert "sonomask_frames_total" in names
    assert "sonomask_request_duration_seconds_bucket" in names
    assert "sonomask_model_info" in names
    assert "sonomask_frames" not in names


# Kubernetes


@pytest.fixture(scope="module")
def rendered(run_check: RunCheck) -> dict[str, list[dict[str, Any]]]:
    """Every kustomization rendered once per module; a failure to render is a finding."""
    manifests, findings = run_check(kubernetes.render_all)
    assert findings == []
    return manifests


@pytest.mark.parametrize("overlay", sorted(kubernetes.KUSTOMIZATIONS))
def test_overlay_passes_core_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    assert kubernetes.check_core_schemas(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", sorted(kubernetes.KUSTOMIZATIONS))
def test_overlay_passes_crd_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, run_check: RunCheck
) -> None:
    operator_kinds = {
        m["kind"] for m in rendered[overlay] if m["apiVersion"] == kubernetes.OPERATOR_GROUP
    }
    assert operator_kinds == {"ServiceMonitor", "PrometheusRule"}

    assert run_check(lambda: kubernetes.check_operator_schemas(rendered[overlay])) == []


@pytest.mark.parametrize("overlay", sorted(kubernetes.KUSTOMIZATIONS))
def test_overlay_follows_workload_rules(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    assert kubernetes.workload_problems(overlay, rendered[overlay]) == []


def _deployment(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == "Deployment")


def _container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = _deployment(manifests)["spec"]["template"]["spec"]["containers"][0]
    return container


def test_core_schema_rejects_unknown_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    manifests = copy.deepcopy(rendered["cpu"])
    _container(manifests)["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}}

    findings = kubernetes.check_core_schemas(manifests)

    assert any("readinesProbe" in finding for finding in findings), findings


def test_crd_schema_rejects_bad_interval(
    rendered: dict[str, list[dict[str, Any]]], run_check: RunCheck
) -> None:
    manifests = copy.deepcopy(rendered["cpu"])
    monitor = next(m for m in manifests if m["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"

    findings = run_check(lambda: kubernetes.check_operator_schemas(manifests))

    assert any("ServiceMonitor/sonomask" in f and "interval" in f for f in findings), findings


@pytest.mark.parametrize(
    ("overlay", "mutate", "expected"),
    [
        (
            "cpu",
            lambda ms: _container(ms)["securityContext"].update(readOnlyRootFilesystem=False),
            "root filesystem is not read-only",
        ),
        ("cpu", lambda ms: _container(ms).pop("startupProbe"), "startupProbe"),
        (
            "cpu",
            lambda ms: _container(ms)["livenessProbe"]["httpGet"].update(path="/readyz"),
            "livenessProbe checks '/readyz'",
        ),
        (
            "cpu",
            lambda ms: _deployment(ms)["spec"]["template"]["spec"]["securityContext"].pop(
                "runAsNonRoot"
            ),
            "runAsNonRoot",
        ),
        ("cpu", lambda ms: _container(ms)["resources"].pop("limits"), "resources.limits"),
        (
            "cpu",
            lambda ms: next(m for m in ms if m["kind"] == "Service")["spec"].pop("sessionAffinity"),
            "session affinity",
        ),
        (
            "gpu",
            lambda ms: _container(ms)["resources"]["limits"].pop("nvidia.com/gpu"),
            "nvidia.com/gpu",
        ),
        (
            "cpu",
            lambda ms: ms.remove(next(m for m in ms if m["kind"] == "PodDisruptionBudget")),
            "no PodDisruptionBudget",
        ),
    ],
    ids=[
        "writable-root",
        "no-startup-probe",
        "liveness-on-readyz",
        "root-allowed",
        "no-limits",
        "no-affinity",
        "gpu-without-gpu",
        "no-pdb",
    ],
)
def test_workload_rules_catch(
    rendered: dict[str, list[dict[str, Any]]],
    overlay: str,
    mutate: Callable[[list[dict[str, Any]]], Any],
    expected: str,
) -> None:
    manifests = copy.deepcopy(rendered[overlay])
    mutate(manifests)

    problems = kubernetes.workload_problems(overlay, manifests)

    assert any(expected in problem for problem in problems), problems


def test_gpu_overlay_requests_one_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    limits = _container(rendered["gpu"])["resources"]["limits"]

    assert int(limits["nvidia.com/gpu"]) == 1
    assert "nvidia.com/gpu" not in _container(rendered["cpu"])["resources"]["limits"]


def test_queue_depth_component_adds_pods_metric(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    def metric_types(overlay: str) -> list[str]:
        hpa = next(m for m in rendered[overlay] if m["kind"] == "HorizontalPodAutoscaler")
        return [metric["type"] for metric in hpa["spec"]["metrics"]]

    assert metric_types("cpu") == ["Resource"]
    assert metric_types("cpu-queue-depth-autoscaling") == ["Resource", "Pods"]


def test_settings_configmap_rolls_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    config_map = next(m for m in rendered["cpu"] if m["kind"] == "ConfigMap")

    assert re.fullmatch(r"sonomask-settings-[a-z0-9]{10}", config_map["metadata"]["name"])
    assert config_map["data"]["SONOMASK_BACKEND"] == "onnx"
    assert config_map["data"]["SONOMASK_HOST"] == "0.0.0.0"


def test_prometheus_rule_matches_alert_file(run_check: RunCheck) -> None:
    assert run_check(kubernetes.check_prometheus_rule) == []
