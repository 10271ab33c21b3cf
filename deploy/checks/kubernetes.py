"""Checks of k8s/: kustomize renders each overlay, every object passes its schema, and the
workload keeps the rules a sonomask pod must follow.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from deploy.checks.monitoring import ALERT_RULES, check_rule_files, query_problems
from deploy.checks.tools import REPO_ROOT, find_tool, run_tool

K8S_DIR = REPO_ROOT / "k8s"
# Every kustomization a user may apply; the example also covers the queue-depth component.
KUSTOMIZATIONS = {
    "cpu": K8S_DIR / "overlays" / "cpu",
    "gpu": K8S_DIR / "overlays" / "gpu",
    "cpu-queue-depth-autoscaling": K8S_DIR / "examples" / "cpu-queue-depth-autoscaling",
}
PROMETHEUS_RULE = K8S_DIR / "base" / "prometheusrule.yaml"
CRD_CHECK_DIR = REPO_ROOT / "deploy" / "crd-check"

# The oldest Kubernetes release the manifests support, and the newest schema on hand.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
OPERATOR_GROUP = "monitoring.coreos.com/v1"

Manifest = dict[str, Any]


def render(kustomization: Path) -> list[Manifest]:
    """Return the objects `kubectl kustomize` builds; raises ValueError if it fails."""
    completed = run_tool([find_tool("kubectl"), "kustomize", str(kustomization)])
    if completed.returncode != 0:
        raise ValueError(completed.output)
    return [doc for doc in yaml.safe_load_all(completed.stdout) if doc]


def render_all() -> tuple[dict[str, list[Manifest]], list[str]]:
    """Render every kustomization; return the objects by name and the failures."""
    rendered = {}
    findings = []
    for name, path in KUSTOMIZATIONS.items():
        try:
            rendered[name] = render(path)
        except ValueError as exc:
            findings.append(f"kubectl kustomize {path.relative_to(REPO_ROOT)}: {exc}")
    return rendered, findings


def _label(manifest: Manifest) -> str:
    return f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"


def check_core_schemas(manifests: Iterable[Manifest]) -> list[str]:
    """Validate core objects against the Kubernetes OpenAPI schemas, rejecting unknown fields.

    Objects of the Prometheus Operator are left to `check_operator_schemas`.
    """
    findings = []
    for manifest in manifests:
        if manifest.get("apiVersion") == OPERATOR_GROUP:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as exc:
                findings.append(f"{_label(manifest)}: {exc.message}")
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path) or "(root)"
                findings.append(
                    f"{_label(manifest)} (Kubernetes {version}) at {path}: {exc.message}"
                )
    return findings


def check_operator_schemas(manifests: Iterable[Manifest]) -> list[str]:
    """Validate ServiceMonitor and PrometheusRule objects against their CRDs' schemas (Node.js)."""
    resources = [m for m in manifests if m.get("apiVersion") == OPERATOR_GROUP]
    if not resources:
        return []
    node = find_tool("node")
    _install_crd_validator()
    completed = run_tool(
        [node, str(CRD_CHECK_DIR / "validate.mjs")], input_text=json.dumps(resources)
    )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        return [f"CRD validator failed (exit {completed.returncode}): {completed.output}"]
    findings: list[str] = report["findings"]
    if report["checked"] != len(resources):
        findings.append(f"CRD validator checked {report['checked']} of {len(resources)} objects")
    return findings


def _install_crd_validator() -> None:
    """Install the validator's locked npm dependencies once (npm ci)."""
    if (CRD_CHECK_DIR / "node_modules" / "@kubernetes-models").is_dir():
        return
    npm = find_tool("npm")
    completed = run_tool(
        [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(CRD_CHECK_DIR)], timeout_s=600
    )
    if completed.returncode != 0:
        raise RuntimeError(f"npm ci in {CRD_CHECK_DIR} failed: {completed.output}")


def check_prometheus_rule() -> list[str]:
    """Check that the PrometheusRule has the groups of alerts.yml and that promtool accepts them."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
    expected = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))["groups"]
    findings = []
    if rule["spec"]["groups"] != expected:
        findings.append(
            f"{PROMETHEUS_RULE.relative_to(REPO_ROOT)}: spec.groups differ from "
            f"{ALERT_RULES.relative_to(REPO_ROOT)}; copy the groups over"
        )
    with tempfile.TemporaryDirectory() as tmp:
        rules_file = Path(tmp) / "prometheusrule-groups.yml"
        rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
        findings.extend(check_rule_files(rules_file))
    return findings


def workload_problems(name: str, manifests: list[Manifest]) -> list[str]:
    """Return what breaks the deployment rules in one rendered kustomization."""
    by_kind: dict[str, list[Manifest]] = {}
    for manifest in manifests:
        by_kind.setdefault(manifest["kind"], []).append(manifest)
    required = (
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
        "Secret",
        "ServiceMonitor",
        "PrometheusRule",
    )
    missing = [kind for kind in required if kind not in by_kind]
    if missing:
        return [f"{name}: no {', '.join(missing)}"]
    if len(by_kind["Deployment"]) != 1:
        return [f"{name}: expected one Deployment, found {len(by_kind['Deployment'])}"]

    deployment = by_kind["Deployment"][0]
    problems = _pod_problems(deployment, manifests)
    problems += _selector_problems(deployment, by_kind)
    problems += _namespace_problems(by_kind["Namespace"][0])

    settings = _settings_of(deployment, by_kind["ConfigMap"])
    if name.startswith("gpu"):
        problems += _gpu_problems(deployment, settings)
    else:
        if settings.get("SONOMASK_BACKEND") != "onnx":
            problems.append("the CPU deployment does not use the onnx backend")
    for hpa in by_kind["HorizontalPodAutoscaler"]:
        problems += _hpa_problems(hpa, deployment)
    return [f"{name}: {problem}" for problem in problems]


def _pod_problems(deployment: Manifest, manifests: list[Manifest]) -> list[str]:
    pod = deployment["spec"]["template"]["spec"]
    problems = []
    pod_security = pod.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True:
        problems.append("the pod does not set runAsNonRoot: true")
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("the pod does not use the RuntimeDefault seccomp profile")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("the pod mounts a service account token it does not need")

    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    for container in pod["containers"]:
        where = f"container {container['name']}"
        security = container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: the root filesystem is not read-only")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: privilege escalation is allowed")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities are not dropped")
        tmp_mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp_mounts or "emptyDir" not in volumes.get(tmp_mounts[0]["name"], {}):
            problems.append(f"{where}: /tmp is not an emptyDir volume")
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(bound, {}):
                    problems.append(f"{where}: no {resource} in resources.{bound}")
        probes = {
            "startupProbe": "/readyz",
            "readinessProbe": "/readyz",
            "livenessProbe": "/healthz",
        }
        for probe, path in probes.items():
            actual = container.get(probe, {}).get("httpGet", {}).get("path")
            if actual != path:
                problems.append(f"{where}: {probe} checks {actual!r}, expected {path!r}")
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            if (kind, ref.get("name")) not in names:
                problems.append(f"{where}: envFrom names a missing {kind} {ref.get('name')!r}")
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional") and ("Secret", ref["name"]) not in names:
                problems.append(f"{where}: {variable['name']} reads a missing Secret {ref['name']}")
    return problems


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _selector_problems(deployment: Manifest, by_kind: dict[str, list[Manifest]]) -> list[str]:
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    problems = []
    service = by_kind["Service"][0]
    if not _matches(service["spec"]["selector"], pod_labels):
        problems.append("the Service selector does not match the pods")
    if service["spec"].get("sessionAffinity") != "ClientIP":
        problems.append("the Service has no ClientIP session affinity for WebRTC signalling")
    for kind in ("PodDisruptionBudget",):
        for manifest in by_kind[kind]:
            if not _matches(manifest["spec"]["selector"]["matchLabels"], pod_labels):
                problems.append(f"the {kind} selector does not match the pods")
    for policy in by_kind["NetworkPolicy"]:
        if not _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels):
            problems.append("the NetworkPolicy does not select the pods")
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for monitor in by_kind["ServiceMonitor"]:
        if not _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
            problems.append("the ServiceMonitor does not select the Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in port_names:
                problems.append(f"the ServiceMonitor scrapes unknown port {endpoint.get('port')!r}")
    return problems


def _namespace_problems(namespace: Manifest) -> list[str]:
    labels = namespace["metadata"].get("labels", {})
    if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
        return ["the Namespace does not enforce the restricted Pod Security Standard"]
    return []


def _settings_of(deployment: Manifest, config_maps: list[Manifest]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    names = {
        source["configMapRef"]["name"]
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    }
    settings: dict[str, str] = {}
    for config_map in config_maps:
        if config_map["metadata"]["name"] in names:
            settings.update(config_map.get("data", {}))
    return settings


def _gpu_problems(deployment: Manifest, settings: dict[str, str]) -> list[str]:
    problems = []
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    if not gpus or int(gpus) < 1:
        problems.append("the GPU deployment requests no nvidia.com/gpu")
    if settings.get("SONOMASK_DEVICE", "").split(":")[0] != "cuda":
        problems.append("the GPU deployment does not set SONOMASK_DEVICE=cuda")
    return problems


def _hpa_problems(hpa: Manifest, deployment: Manifest) -> list[str]:
    problems = []
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"the HPA scales {target['kind']}/{target['name']}, not the Deployment")
    for metric in hpa["spec"].get("metrics", []):
        if metric["type"] == "Pods":
            metric_name = metric["pods"]["metric"]["name"]
            problems += [f"HPA metric: {p}" for p in query_problems(metric_name)]
    return problems


def check_kubernetes() -> list[str]:
    """Render every kustomization and run every Kubernetes check on the result."""
    rendered, findings = render_all()
    for name, manifests in rendered.items():
        findings += [f"{name}: {finding}" for finding in check_core_schemas(manifests)]
        findings += [f"{name}: {finding}" for finding in check_operator_schemas(manifests)]
        findings += workload_problems(name, manifests)
    findings += check_prometheus_rule()
    return findings
