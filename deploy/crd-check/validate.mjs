// Validate Prometheus Operator resources against the OpenAPI schemas of their CRDs.
//
// Input on stdin: a JSON array of Kubernetes objects (deploy/check_deploy.py renders k8s/ and
// sends the monitoring.coreos.com ones). Output on stdout: a JSON object
// {"checked": N, "findings": ["Kind/name: message", ...]}. Exit code 1 when there are findings.
//
// The schemas come from @kubernetes-models/prometheus-operator, generated from the project's CRDs.
// They check types, required fields, enums and patterns (durations, for example). Like the CRDs
// themselves, they do not reject unknown fields.
import * as monitoringV1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const GROUP_VERSION = "monitoring.coreos.com/v1";

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on("data", (chunk) => chunks.push(chunk));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    process.stdin.on("error", reject);
  });
}

function validateResource(resource) {
  const name = `${resource.kind}/${resource.metadata?.name ?? "<unnamed>"}`;
  if (resource.apiVersion !== GROUP_VERSION) {
    return [`${name}: apiVersion ${resource.apiVersion} is not ${GROUP_VERSION}`];
  }
  const Model = monitoringV1[resource.kind];
  if (typeof Model !== "function") {
    return [`${name}: kind ${resource.kind} is not part of ${GROUP_VERSION}`];
  }
  try {
    new Model(resource).validate();
    return [];
  } catch (error) {
    return [`${name}: ${error.message}`];
  }
}

const resources = JSON.parse(await readStdin());
if (!Array.isArray(resources)) {
  process.stdout.write(JSON.stringify({ checked: 0, findings: ["input is not a JSON array"] }));
  process.exit(1);
}
const findings = resources.flatMap(validateResource);
process.stdout.write(JSON.stringify({ checked: resources.length, findings }));
process.exit(findings.length > 0 ? 1 : 0);
