#!/usr/bin/env python3
"""Validates deploy/kubernetes/ offline (run by scripts/test.sh; no cluster needed).

1. Every built-in resource against the Kubernetes OpenAPI schemas bundled by the
   `kubernetes-validate` package, strictly (unknown fields fail).
2. The ServiceMonitor (a Prometheus Operator CRD, outside those schemas) against the subset of
   its CRD schema we use, tests/k8s/servicemonitor.schema.json, unknown fields failing.
3. What ties them together: kustomization.yaml lists every manifest; Service, ServiceMonitor,
   HPA and PDB select the Deployment's pods and name ports that exist; the probes hit
   /readyz and /healthz; terminationGracePeriodSeconds covers the preStop sleep plus the
   drain in the ConfigMap's sluice.toml.
4. With SLUICE_BIN_DIR (the built binaries), the ConfigMap's sluice.toml passes
   `sluice check-config` with the Deployment's literal SLUICE__ overrides, its variables
   from the Secret (the placeholders) and the Secret's files.

    python3 scripts/check-manifests.py [deploy/kubernetes]
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S_VERSION = "1.33.0"


def fail(msg):
    print(f"check-manifests: {msg}", file=sys.stderr)
    sys.exit(1)


def load(directory):
    docs = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.setdefault(doc["kind"], []).append((path, doc))
    return docs


def one(docs, kind):
    items = docs.get(kind, [])
    if len(items) != 1:
        fail(f"expected one {kind}, found {len(items)}")
    return items[0][1]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def main():
    directory = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "deploy/kubernetes"
    docs = load(directory)

    # 1. Built-in kinds against the bundled schemas.
    for kind, items in docs.items():
        if kind == "ServiceMonitor":
            continue
        for path, doc in items:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{path.name}: {kind}: {e.message} at {list(e.path)}")
            except kubernetes_validate.utils.SchemaNotFoundError as e:
                fail(f"{path.name}: no schema for {kind}: {e}")

    # 2. The ServiceMonitor against its CRD schema (the fields we use).
    schema = json.loads((ROOT / "tests/k8s/servicemonitor.schema.json").read_text())
    monitor = one(docs, "ServiceMonitor")
    try:
        jsonschema.validate(monitor, schema)
    except jsonschema.ValidationError as e:
        fail(f"ServiceMonitor: {e.message} at {list(e.path)}")

    # 3. Cross references.
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    if listed != present:
        fail(f"kustomization.yaml resources {sorted(listed)} != files {sorted(present)}")

    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    if not selects(deployment["spec"]["selector"]["matchLabels"], pod_labels):
        fail("Deployment selector does not match its pod labels")
    container = pod["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}

    service = one(docs, "Service")
    if not selects(service["spec"]["selector"], pod_labels):
        fail("Service does not select the Deployment's pods")
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for p in service["spec"]["ports"]:
        if isinstance(p["targetPort"], str) and p["targetPort"] not in port_names:
            fail(f"Service targetPort {p['targetPort']} is not a container port")

    if not selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
        fail("ServiceMonitor does not select the Service")
    for ep in monitor["spec"]["endpoints"]:
        if ep["port"] not in service_ports:
            fail(f"ServiceMonitor port {ep['port']} is not a Service port")

    for kind in ("PodDisruptionBudget",):
        if not selects(one(docs, kind)["spec"]["selector"]["matchLabels"], pod_labels):
            fail(f"{kind} does not select the Deployment's pods")
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        fail("HPA does not target the Deployment")

    probes = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    for probe, want in probes.items():
        got = container[probe]["httpGet"]
        if got["path"] != want or got["port"] not in port_names:
            fail(f"{probe} should GET {want} on a container port, not {got}")

    configmap = one(docs, "ConfigMap")
    config_text = configmap["data"]["sluice.toml"]
    config = tomllib.loads(config_text)
    drain_s = config.get("server", {}).get("drain_timeout_ms", 30000) / 1000
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    if grace <= pre_stop + drain_s:
        fail(f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain_s}")
    if config["server"]["listen"].startswith("127."):
        fail("the ConfigMap's server.listen is loopback: the Service cannot reach it")
    if not config.get("admin", {}).get("metrics_on_main"):
        fail("the ServiceMonitor scrapes the main port: set admin.metrics_on_main")

    # 4. The config itself, through the real binary.
    bin_dir = os.environ.get("SLUICE_BIN_DIR")
    if bin_dir:
        secret = one(docs, "Secret")
        mount = next(
            m["mountPath"] for m in container["volumeMounts"] if m["name"] == "secrets"
        )
        with tempfile.TemporaryDirectory() as tmp:
            for name, value in secret["stringData"].items():
                pathlib.Path(tmp, name).write_text(value + "\n")
            path = pathlib.Path(tmp, "sluice.toml")
            path.write_text(config_text.replace(mount, tmp))
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE")}
            secret_name = secret["metadata"]["name"]
            for e in container.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef", {})
                if "value" in e and e["name"].startswith("SLUICE__"):
                    env[e["name"]] = e["value"]
                elif ref.get("name") == secret_name:
                    # SLUICE_PG_URL, SLUICE__SHARED__REDIS_URL, ...: the Secret's placeholder.
                    env[e["name"]] = secret["stringData"][ref["key"]]
            out = subprocess.run(
                [os.path.join(bin_dir, "sluice"), "check-config", str(path)],
                env=env,
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                fail(f"sluice check-config on the ConfigMap: {out.stderr.strip()}")
    count = sum(len(v) for v in docs.values())
    print(f"check-manifests: {count} resources in {directory} are valid")


if __name__ == "__main__":
    main()
