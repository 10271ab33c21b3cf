#!/usr/bin/env bash
# Validate the deployment files without a Docker engine or a cluster. The checks run
# hadolint on the Dockerfile, the Compose schema and `docker compose config` on the compose
# files, and promtool on the Prometheus config and alert rules, with their unit tests. They
# match the Grafana dashboard's queries against the service's metrics, render every k8s/
# kustomization with kubectl, and validate each object: core kinds against the Kubernetes
# schemas, Prometheus Operator kinds against their CRDs. The script exits 1 on any finding
# or missing tool; deploy/checks/tools.py says how to install each tool.
#   scripts/check-deploy.sh
# The live checks (a real Prometheus scraping the service, WebRTC through coturn) run
# under pytest: .venv/bin/python -m pytest tests/deploy
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-.venv/bin/python}"
if [ ! -x "$python" ]; then
    echo "check-deploy: $python not found: run scripts/test.sh once, or set PYTHON" >&2
    exit 1
fi
exec "$python" -m deploy.checks
